"""open_model decrypts into memory: no file appears while sealed models are opened and used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from modelshield import vault
from modelshield.demo import DemoData, DemoModel
from modelshield.errors import IntegrityError
from modelshield.models import load_model

PROBE = textwrap.dedent(
    """
    import json, os, sys, tempfile
    import numpy as np
    from modelshield import vault
    # imported before watching: importing onnxruntime writes its telemetry session file ".ses" to
    # the temporary folder, which has nothing to do with the model
    import modelshield.models, onnxruntime, skops.io

    def tree():
        return sorted(os.path.join(root, name)
                      for folder in (tempfile.gettempdir(), os.getcwd())
                      for root, dirs, files in os.walk(folder) for name in dirs + files)

    identity = vault.load_identity(sys.argv[1])
    trusted = vault.load_verifying_key(sys.argv[2])
    x = np.load(sys.argv[3])
    events = []
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in "wax+")) or (flags or 0) & WRITE:
                events.append([event, str(args[0])])
        elif event in ("os.rename", "os.link", "os.symlink", "os.mkdir", "os.truncate",
                       "tempfile.mkstemp", "tempfile.mkdtemp", "shutil.copyfile", "os.remove"):
            events.append([event, str(args[0])])

    before = tree()
    sys.addaudithook(hook)
    labels = {}
    for name in sys.argv[4:]:
        model = vault.open_model(name, identity, require_signer=trusted)
        labels[name] = model.predict(x).tolist()
        model.predict_proba(x[:3])
    print(json.dumps({"events": events, "labels": labels, "new": sorted(set(tree()) - set(before)),
                      "tmp": tempfile.gettempdir(), "cwd": os.getcwd()}))
    """
)


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_no_file_appears_while_sealed_models_are_used(
    tmp_path: Path,
    demo_model: DemoModel,
    demo_data: DemoData,
    identity: vault.Identity,
    signer: vault.SigningKey,
) -> None:
    keys, work, temp = tmp_path / "keys", tmp_path / "cwd", tmp_path / "tmp"
    for folder in (keys, work, temp):
        folder.mkdir()
    identity.save(keys / "srv.key")
    signer.verifying_key.save(keys / "me.signing.pub")
    x = demo_data.x_test[:50]
    np.save(keys / "x.npy", x)
    onnx, skops = keys / "digits.onnx.sealed", keys / "digits.skops.sealed"
    vault.seal_bytes(demo_model.onnx_bytes, onnx, identity.recipient, signer)
    vault.seal_bytes(demo_model.skops_bytes, skops, identity.recipient, signer)
    before = {folder: tree(folder) for folder in (keys, work)}

    env = {**os.environ, "TMPDIR": str(temp), "TEMP": str(temp), "TMP": str(temp)}
    argv = [str(keys / "srv.key"), str(keys / "me.signing.pub"), str(keys / "x.npy")]
    result = subprocess.run(
        [sys.executable, "-B", "-c", PROBE, *argv, str(onnx), str(skops)],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])

    assert (report["tmp"], report["cwd"]) == (str(temp), str(work))
    assert report["events"] == []  # no file opened for writing, renamed, linked, made or removed
    assert report["new"] == []  # nothing new under the temporary folder and the working folder
    assert {folder: tree(folder) for folder in (keys, work)} == before
    assert tree(work) == []
    expected = load_model(demo_model.onnx_bytes).predict(x).tolist()
    assert report["labels"][str(onnx)] == expected
    assert report["labels"][str(skops)] == demo_model.estimator.predict(x).tolist()


def test_open_model_refuses_unsigned_when_a_signer_is_required(
    tmp_path: Path, demo_model: DemoModel, identity: vault.Identity, signer: vault.SigningKey
) -> None:
    path = tmp_path / "m"
    vault.seal_bytes(demo_model.onnx_bytes, path, identity.recipient)
    assert vault.open_model(path, identity).classes == tuple(range(10))
    with pytest.raises(IntegrityError):
        vault.open_model(path, identity, require_signer=signer.verifying_key)
