#!/usr/bin/env bash
# Long run of the hostile-guest test (tests/SharpVisor.Integration.Tests/HostileGuestTests.cs):
# seeds follow one another through every IOMMU and clock mode until MINUTES have passed.
# Usage: tools/hostile-guest.sh [MINUTES]   (default 30; CI runs a two-seed sample through ./test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/common.sh
require_dotnet
minutes=${1:-30}
dotnet build tests/SharpVisor.Integration.Tests -c Release -nologo -v quiet -clp:NoSummary
SHARPVISOR_HOSTILE_MINUTES=$minutes dotnet test tests/SharpVisor.Integration.Tests -c Release --no-build -nologo \
    --filter "FullyQualifiedName~HostileGuestTests" --logger "console;verbosity=detailed"
