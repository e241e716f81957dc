"""`medclf predict` over files, folders, globs and DICOM, with bad files skipped by name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from _fixtures_serve import synthetic_image
from medclf.cli import main
from medclf.serve._cli import expand_inputs

torch.set_num_threads(1)


def _dicom(path, rgb: np.ndarray) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-778899"
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.astype(np.uint8).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture()
def inputs(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in dir ünï"
    (d / "sub").mkdir(parents=True)
    synthetic_image(0, rng).save(d / "a.png")
    synthetic_image(1, rng).save(d / "sub" / "b.jpg")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (d / "empty.jpg").write_bytes(b"")
    _dicom(d / "c.dcm", np.asarray(synthetic_image(1, rng)))
    return d


def test_expand_inputs(inputs, tmp_path) -> None:
    files, missing = expand_inputs([str(inputs), str(inputs / "*.png"), str(tmp_path / "nope.png")])
    names = sorted(f.name for f in files)
    assert names == ["a.png", "b.jpg", "broken.png", "c.dcm", "empty.jpg"]
    assert missing == [f"{tmp_path / 'nope.png'} (not found)"]


def test_predict_cli_skips_bad_files_and_writes_csv(tiny_run, inputs, tmp_path, capsys) -> None:
    out = tmp_path / "pred.csv"
    rc = main(["predict", str(tiny_run), str(inputs), "--csv", str(out), "--backend", "torch"])
    cap = capsys.readouterr()
    assert rc == 1  # some files skipped
    assert "broken.png" in cap.err and "empty.jpg" in cap.err and "empty" in cap.err
    assert "3 predicted, 2 skipped" in cap.out and "Research use only" in cap.out
    df = pd.read_csv(out)
    assert sorted(df.path.map(lambda p: p.rsplit("/", 1)[-1])) == ["a.png", "b.jpg", "c.dcm"]
    assert {"prob_benign", "prob_malignant", "decision", "refer", "ood_score"} <= set(df.columns)
    np.testing.assert_allclose(df.prob_benign + df.prob_malignant, 1.0, atol=1e-5)
    # DICOM patient identifiers never reach the output
    text = out.read_text() + cap.out + cap.err
    assert "Doe" not in text and "PID-778899" not in text


def test_predict_cli_all_good_and_nothing_to_do(tiny_run, inputs, capsys) -> None:
    assert main(["predict", str(tiny_run), str(inputs / "a.png"), str(inputs / "sub" / "*.jpg")]) == 0
    assert "2 predicted, 0 skipped" in capsys.readouterr().out
    assert main(["predict", str(tiny_run), str(inputs / "*.gif")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["predict", str(inputs), str(inputs / "a.png")]) == 2  # not a run folder


def test_predict_cli_openvino_bf16_agrees_with_onnx(tiny_run, inputs, tmp_path) -> None:
    a, b = tmp_path / "onnx.csv", tmp_path / "bf16.csv"
    files = [str(inputs / "a.png"), str(inputs / "sub" / "b.jpg"), str(inputs / "c.dcm")]
    assert main(["predict", str(tiny_run), *files, "--csv", str(a)]) == 0
    assert main(["predict", str(tiny_run), *files, "--csv", str(b), "--backend", "openvino", "--bf16"]) == 0
    pa, pb = pd.read_csv(a), pd.read_csv(b)
    np.testing.assert_allclose(pa.prob_malignant, pb.prob_malignant, atol=0.1)
    assert main(["predict", str(tiny_run), *files, "--bf16"]) == 2  # bf16 needs --backend openvino


@pytest.mark.parametrize("command", ["serve", "app"])
def test_a_busy_port_is_one_line_before_the_model_loads(command, tmp_path, monkeypatch, capsys) -> None:
    import socket

    import medclf.serve._cli as serve_cli
    import medclf.serve.server as server

    def never(*args, **kwargs):  # the port is checked first: nothing may be loaded or started
        raise AssertionError("loaded or started despite the busy port")

    monkeypatch.setattr(serve_cli, "_load_predictor", never)
    monkeypatch.setattr(server, "run_app", never)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main([command, str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    # once the port is free again the check passes
    serve_cli.check_port("127.0.0.1", port)
