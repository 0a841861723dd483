"""The token service's Workload API bundle client without an agent: the hand-encoded
JWTBundlesResponse codec, and the sentence when no agent answers.

Against the real spire-agent (keys that verify real SVIDs, the security header, a JWT
key rotation and revocation followed on the stream) it runs in tests/integration/spire
(test_spire_attestor.py, test_spire_bundle_rotation.py), which replaced the stand-in
Workload API server this file used to run.
"""

from __future__ import annotations

import pytest
from flashpods_token.workload_bundle import decode_bundles, encode_bundles

TD_ID = "spiffe://flashpods.internal"


def test_protobuf_map_round_trip():
    bundles = {TD_ID: b'{"keys": []}', "spiffe://other.example": b"x" * 300}
    assert decode_bundles(encode_bundles(bundles)) == bundles


def test_no_agent_fails_at_start_with_a_sentence(tmp_path, secret_files, podman, sock_dir):
    from flashpods_token.workload_bundle import WorkloadApiBundle

    with pytest.raises(ValueError, match="allow_unauthenticated_verifiers"):
        WorkloadApiBundle(str(sock_dir / "nothing.sock"), "flashpods.internal", wait_s=1)
