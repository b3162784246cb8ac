"""Issue 10, cluster-wide install: one resource per KMS store."""

from claims import run_claim_scenarios
from conftest import FINDINGS


def test_claims_cluster_wide(kubectl, operator, emulator, make_namespace, fresh_host):
    ns_a, ns_b = make_namespace("claims-a"), make_namespace("claims-b")
    result = run_claim_scenarios(kubectl, emulator, ns_a, ns_b, [fresh_host(), fresh_host(), fresh_host()], "cw")
    FINDINGS.append(f"claims, cluster-wide: the next resource took over {result['takeover_seconds']}s after the "
                    f"holder was deleted; the non-holder's condition: {result['claim_message']!r}")
