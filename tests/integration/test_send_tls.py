"""DICOM TLS when sending: the node (pynetdicom SCU) → dcmtk ``storescp +tls`` requiring a client cert."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from dicomnode.config import DestinationConfig, TLSConfig
from dicomnode.errors import SendError
from dicomnode.send.destination import DicomDestination
from tests.fixtures_orthanc import make_pki
from tests.support import shared_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("pki")
    return make_pki(root / "hospital", "hospital"), make_pki(root / "rogue", "rogue")


def _destination(port: int, tls: TLSConfig) -> DicomDestination:
    cfg = DestinationConfig(ae_title="STORESCP", host="127.0.0.1", port=port, tls=tls, timeout=10)
    return DicomDestination("secure", cfg, "DICOMNODE")


def test_tls_send_delivers_and_untrusted_certificates_are_refused(storescp, pkis) -> None:  # noqa: ANN001
    good, rogue = pkis
    scp = storescp(tls=(good.server_key, good.server_cert, good.ca))
    files = sorted(shared_data("ct-abdomen-20", "dicom").glob("*.dcm"))[:2]

    trusted = TLSConfig(enabled=True, ca=good.ca, cert=good.client_cert, key=good.client_key)
    outcomes = _destination(scp.port, trusted).send(files)
    assert [o.delivered for o in outcomes] == [True, True]
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in scp.files()}
    assert received == {o.sop_instance_uid for o in outcomes}

    # we do not trust the server: its certificate is not signed by the CA we were given
    wrong_ca = TLSConfig(enabled=True, ca=rogue.ca, cert=good.client_cert, key=good.client_key)
    with pytest.raises(SendError, match=r"TLS handshake failed: CERTIFICATE_VERIFY_FAILED"):
        _destination(scp.port, wrong_ca).send(files)

    # the server does not trust us: our client certificate comes from another CA
    untrusted_client = TLSConfig(enabled=True, ca=good.ca, cert=rogue.client_cert, key=rogue.client_key)
    with pytest.raises(SendError, match=r"'secure' 'STORESCP' at 127.0.0.1:\d+ \(TLS\)"):
        _destination(scp.port, untrusted_client).send(files)
    assert len(scp.files()) == 2  # nothing else arrived


def test_tls_misconfiguration_is_a_clear_error(tmp_path: Path) -> None:
    missing = TLSConfig(enabled=True, ca=tmp_path / "nope.pem")
    with pytest.raises(SendError, match="nope.pem"):
        _destination(11112, missing)
