"""Checkpoints from the hub: download, cache, revisions, offline use, safe loading, and the errors.

Every test drives the real huggingface_hub client, in a bbx subprocess, against the hub
look-alike of tests/hubserver.py on 127.0.0.1 (``HF_ENDPOINT``), with its own empty cache
(``HF_HOME``). Nothing in huggingface_hub is patched.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import bbx
from bbx import download, registry
from bbx.errors import ModelError, UsageError
from tests.cli import bbx_proc, proc_env
from tests.util import checkpoint_fixture, tiny_checkpoint

tiny_resnet = checkpoint_fixture("resnet", seed=3)

BASE = ["config.json", "preprocessor_config.json"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "v1": tiny_checkpoint(root / "v1", "resnet", hidden_sizes=[8, 16, 16, 32], seed=0),
        "v2": tiny_checkpoint(root / "v2", "resnet", hidden_sizes=[8, 16, 16, 24], seed=1),
    }


def run(hub, *args, **env):
    return bbx_proc(*args, env=hub.env(**env))


PROBE = """
import json, sys
from bbx import hub
from bbx.errors import BbxError

for op, model, revision in json.loads(sys.argv[1]):
    try:
        if op == "load":
            import bbx
            m = bbx.load_backbone(model, revision=revision)
            ref, out = m.ref, {"channels": m.channels}
        else:
            ref, out = hub.resolve(model, revision=revision, weights=op == "fetch"), {}
    except BbxError as e:
        sys.stderr.write(f"bbx: error: {e.message}\\n")
        print(json.dumps({"code": e.exit_code, "error": e.message}))
        continue
    files = [f.name for f in ref.snapshot.files] if ref.snapshot else []
    out.update(repo_id=ref.repo_id, commit=ref.commit, source=ref.source, folder=str(ref.folder), files=files,
               last=ref.config["hidden_sizes"][-1])
    print(json.dumps(out))
"""


def probe(hub, *calls, cwd=None, **env) -> list[dict]:
    """``hub.resolve`` (op ``resolve``: configs only; ``fetch``: with the weights) or
    ``bbx.load_backbone`` (op ``load``) for each ``(op, model, revision)``, in one subprocess with
    ``hub.env(**env)``: a dict per call, ``{"code", "error"}`` for a BbxError."""
    full = proc_env(**hub.env(**env))
    p = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(calls)], env=full, capture_output=True, text=True, cwd=cwd
    )
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def api(hub, model: str, revision: str | None = None, **env) -> dict:
    """``bbx.load_backbone(model, revision=revision)`` in a subprocess."""
    return probe(hub, ("load", model, revision), **env)[0]


def is_error(result: dict, code: int, *needles: str) -> None:
    assert result.get("code") == code, result
    assert "\n" not in result["error"]
    for needle in needles:
        assert needle in result["error"], (needle, result["error"])


def one_line_error(p: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert p.returncode == code, (p.returncode, p.stderr)
    assert p.stdout == ""
    assert p.stderr.startswith("bbx: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert "Traceback" not in p.stderr
    for needle in needles:
        assert needle in p.stderr, (needle, p.stderr)
    return p.stderr


def fetched(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# ---------------------------------------------------------------------------------------------
# download, cache, offline


def test_download_then_everything_works_offline(hub_server, ckpts):
    sha = hub_server.add_repo("org/tiny", ckpts["v1"])
    out = fetched(run(hub_server, "download", "org/tiny", "--json"))
    assert out["repo_id"] == "org/tiny" and out["commit"] == sha and out["revision"] == "main"
    assert [f["name"] for f in out["files"]] == [*BASE, "model.safetensors"]
    assert not any(f["cached"] for f in out["files"])
    assert out["bytes_downloaded"] == out["bytes"] > 100_000
    assert out["folder"].endswith(f"snapshots/{sha}") and out["folder"].startswith(str(hub_server.home))

    hub_server.clear_log()
    p = run(hub_server, "inspect", "org/tiny", "--json", offline=True)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["checkpoint"] == "org/tiny" and report["revision"] == sha and report["source"] == "hub"
    assert [s["channels"] for s in report["stages"]] == [8, 8, 16, 16, 32]

    ref = api(hub_server, "org/tiny", offline=True)
    assert ref["repo_id"] == "org/tiny" and ref["commit"] == sha and ref["channels"] == [32]
    assert hub_server.requests == []  # offline means no request at all


def test_cache_hit_transfers_nothing_again(hub_server, ckpts):
    sha = hub_server.add_repo("org/tiny", ckpts["v1"])
    first = run(hub_server, "download", "org/tiny")
    assert first.returncode == 0 and first.stdout == ""
    assert f"org/tiny @ {sha}" in first.stderr and "3 downloaded" in first.stderr
    again = fetched(run(hub_server, "download", "org/tiny", "--json"))
    assert all(f["cached"] for f in again["files"]) and again["bytes_downloaded"] == 0
    assert len(hub_server.transfers("model.safetensors")) == 1
    assert len(hub_server.transfers("preprocessor_config.json")) == 1


def test_only_the_files_bbx_needs_are_fetched(hub_server, ckpts, tmp_path):
    state = load_file(str(ckpts["v1"] / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    junk = {
        "pytorch_model.bin": (tmp_path / "pytorch_model.bin").read_bytes(),
        "tf_model.h5": b"\0" * 64,
        "flax_model.msgpack": b"\0" * 64,
        "README.md": b"# tiny\n",
        "onnx/model.onnx": b"\0" * 64,
    }
    hub_server.add_repo("org/tiny", ckpts["v1"], files=junk)
    out = fetched(run(hub_server, "download", "org/tiny", "--json"))
    assert [f["name"] for f in out["files"]] == [*BASE, "model.safetensors"]
    asked = {r.path.rsplit("/", 1)[-1] for r in hub_server.requests if "/resolve/" in r.path}
    assert asked == {*BASE, "model.safetensors"}


def test_pinned_revisions(hub_server, ckpts):
    sha1 = hub_server.add_repo("org/tiny", ckpts["v1"], tags=("v1",))
    sha2 = hub_server.add_repo("org/tiny", ckpts["v2"])  # main moves on

    def seen(results):
        return [r.get("code") or (r["commit"], r["last"]) for r in results]

    calls = [("resolve", "org/tiny", None), ("resolve", "org/tiny", "v1"), ("resolve", "org/tiny", sha1)]
    assert seen(probe(hub_server, *calls)) == [(sha2, 24), (sha1, 32), (sha1, 32)]
    out = fetched(run(hub_server, "download", "org/tiny", "--revision", "v1", "--json"))
    assert out["commit"] == sha1 and out["revision"] == "v1"

    hub_server.clear_log()  # a commit sha whose files are all cached needs no request
    assert seen(probe(hub_server, ("fetch", "org/tiny", sha1))) == [(sha1, 32)]
    assert hub_server.requests == []

    # offline: branches and tags resolve through the cache; main's weights were never fetched
    calls += [("load", "org/tiny", "v1"), ("load", "org/tiny", None)]
    results = probe(hub_server, *calls, offline=True)
    assert seen(results) == [(sha2, 24), (sha1, 32), (sha1, 32), (sha1, 32), 8]
    is_error(results[-1], 8, "weights of org/tiny", sha2, "bbx download org/tiny")
    assert hub_server.requests == []


def test_hf_hub_cache_is_respected_and_download_needs_no_torch(hub_server, ckpts, tmp_path):
    sha = hub_server.add_repo("org/tiny", ckpts["v1"])
    cache = tmp_path / "elsewhere"
    code = (
        "import sys\n"
        "from bbx.cli import main\n"
        "sys.argv = ['bbx', 'download', 'org/tiny', '--json']\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    assert 'torch' not in sys.modules, 'bbx download imported torch'\n"
    )
    full = proc_env(**hub_server.env(HF_HUB_CACHE=str(cache)))
    p = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True)
    out = fetched(p)
    assert out["folder"] == str(cache / "models--org--tiny" / "snapshots" / sha)
    assert probe(hub_server, ("fetch", "org/tiny", None), offline=True, HF_HUB_CACHE=str(cache))[0]["commit"] == sha


def test_unreachable_hub_falls_back_to_a_complete_cache(hub_server, ckpts):
    sha = hub_server.add_repo("org/tiny", ckpts["v1"])
    fetched(run(hub_server, "download", "org/tiny", "--json"))
    closed = "http://127.0.0.1:9"
    out = fetched(run(hub_server, "download", "org/tiny", "--json", HF_ENDPOINT=closed))
    assert out["commit"] == sha and out["source"] == "cache" and "hub unreachable" in out["note"]


# ---------------------------------------------------------------------------------------------
# weights: safetensors shards, .bin only, safety


def _shard(folder, tmp_path):
    state = load_file(str(folder / "model.safetensors"))
    keys = sorted(state)
    parts = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    files = {}
    for name, ks in parts.items():
        save_file({k: state[k] for k in ks}, str(tmp_path / name), metadata={"format": "pt"})
        files[name] = (tmp_path / name).read_bytes()
    index = {"metadata": {}, "weight_map": {k: n for n, ks in parts.items() for k in ks}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    for name in ("config.json", "preprocessor_config.json"):
        files[name] = (folder / name).read_bytes()
    return files


def test_sharded_safetensors_through_the_index(hub_server, ckpts, tmp_path):
    hub_server.add_repo("org/sharded", files=_shard(ckpts["v1"], tmp_path))
    out = fetched(run(hub_server, "download", "org/sharded", "--json"))
    assert [f["name"] for f in out["files"]] == [
        *BASE,
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    sharded = bbx.load_backbone(out["folder"])  # the snapshot folder, read in this process
    single = bbx.load_backbone(str(ckpts["v1"]))
    for (k, a), (_, b) in zip(single.state_dict().items(), sharded.state_dict().items()):
        assert torch.equal(a, b), k


def test_bin_only_repo_loads_with_weights_only(hub_server, ckpts, tmp_path):
    state = load_file(str(ckpts["v1"] / "model.safetensors"))
    torch.save(state, tmp_path / "pytorch_model.bin")
    files = {n: (ckpts["v1"] / n).read_bytes() for n in BASE}
    files["pytorch_model.bin"] = (tmp_path / "pytorch_model.bin").read_bytes()
    hub_server.add_repo("org/old", files=files)
    ref = api(hub_server, "org/old")
    assert ref["channels"] == [32] and ref["files"] == [*BASE, "pytorch_model.bin"]
    assert sorted(os.listdir(ref["folder"])) == sorted([*BASE, "pytorch_model.bin"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_bin_from_the_hub_is_refused(hub_server, ckpts, tmp_path):
    files = {n: (ckpts["v1"] / n).read_bytes() for n in BASE}
    files["pytorch_model.bin"] = pickle.dumps({"resnet.embedder.embedder.convolution.weight": _Evil()})
    hub_server.add_repo("org/evil", files=files)
    (result,) = probe(hub_server, ("fetch", "org/evil", None), ("load", "org/evil", None), cwd=tmp_path)[1:]
    is_error(result, 4, "refused to load", "pytorch_model.bin")
    assert not (tmp_path / "PWNED").exists()


def test_weights_that_do_not_fit(hub_server, ckpts):
    files = {n: (ckpts["v1"] / n).read_bytes() for n in BASE}
    files["model.safetensors"] = (ckpts["v2"] / "model.safetensors").read_bytes()  # stage 4: 24 vs 32
    hub_server.add_repo("org/mixed", files=files)
    is_error(api(hub_server, "org/mixed"), 4, "weights in org/mixed do not fit the architecture")


# ---------------------------------------------------------------------------------------------
# errors: one line, a distinct exit status


def test_repo_not_found(hub_server):
    p = run(hub_server, "download", "org/nope")
    one_line_error(p, 5, "hub repository org/nope not found", "HF_TOKEN")


def test_private_repo(hub_server, ckpts):
    hub_server.add_repo("org/private", ckpts["v1"], private=True, token="hf_right")
    # the hub answers a private repo without a token exactly as a missing one
    one_line_error(run(hub_server, "download", "org/private"), 5, "not found", "if it is private, set HF_TOKEN")
    one_line_error(run(hub_server, "download", "org/private", token="hf_wrong"), 6, "refused", "HF_TOKEN")
    assert fetched(run(hub_server, "download", "org/private", "--json", token="hf_right"))["repo_id"]
    assert all(r.token == "hf_right" for r in hub_server.transfers())


def test_gated_repo(hub_server, ckpts):
    hub_server.add_repo("org/gated", ckpts["v1"], gated=True, token="hf_granted")
    hub_server.add_repo("org/other", ckpts["v1"], private=True, token="hf_elsewhere")
    one_line_error(run(hub_server, "download", "org/gated"), 6, "org/gated is a gated repository", "HF_TOKEN")
    one_line_error(run(hub_server, "download", "org/gated", token="hf_elsewhere"), 6, "no access")
    assert fetched(run(hub_server, "download", "org/gated", "--json", token="hf_granted"))["commit"]


def test_revision_not_found(hub_server, ckpts):
    hub_server.add_repo("org/tiny", ckpts["v1"])
    one_line_error(run(hub_server, "download", "org/tiny", "--revision", "v9"), 7, "revision 'v9' not found")
    one_line_error(run(hub_server, "download", "org/tiny", "--revision", "0" * 40), 7, "not found in org/tiny")


def test_offline_with_nothing_cached(hub_server):
    p = run(hub_server, "inspect", "org/tiny", offline=True)
    one_line_error(p, 8, "offline", "not in the cache", "bbx download org/tiny")
    p = run(hub_server, "download", "org/tiny", "--revision", "v1", offline=True)
    one_line_error(p, 8, "downloading needs the network: unset HF_HUB_OFFLINE")
    assert "run `bbx download" not in p.stderr  # it is what the user just ran
    # an alias has its config embedded: random weights need no download at all
    p = run(hub_server, "bench", "resnet-18", "--pretrained", offline=True)
    one_line_error(p, 8, "bbx download microsoft/resnet-18", "--no-pretrained")
    assert hub_server.requests == []


def test_network_unreachable(hub_server):
    start = time.monotonic()
    p = run(hub_server, "download", "org/tiny", HF_ENDPOINT="http://127.0.0.1:9")
    one_line_error(p, 9, "cannot reach the hub at http://127.0.0.1:9", "connection failed", "check the network")
    assert "bbx download" not in p.stderr
    p = run(hub_server, "inspect", "org/tiny", HF_ENDPOINT="http://127.0.0.1:9")
    one_line_error(p, 9, "bbx download org/tiny", "checkpoint folder")
    assert time.monotonic() - start < 20


def test_hub_that_does_not_answer_times_out(hub_server):
    hub_server.hang = True
    start = time.monotonic()
    p = run(hub_server, "download", "org/tiny", HF_HUB_ETAG_TIMEOUT="1")
    one_line_error(p, 9, "no answer within 1 s", "check the network")
    assert time.monotonic() - start < 10
    assert len(hub_server.requests) == 1


def test_unsupported_model_type_is_refused_before_the_weights(hub_server, ckpts):
    files = {n: (ckpts["v1"] / n).read_bytes() for n in ("preprocessor_config.json", "model.safetensors")}
    files["config.json"] = json.dumps({"model_type": "bert", "hidden_size": 8}).encode()
    hub_server.add_repo("org/bert", files=files)
    p = run(hub_server, "download", "org/bert")
    supported = "bbx supports: " + ", ".join(registry.supported_model_types())  # every family, whichever there are
    one_line_error(p, 4, "unsupported model_type 'bert'", "org/bert@", supported)
    assert hub_server.transfers("model.safetensors") == []


def test_weights_missing_from_the_repo(hub_server, ckpts):
    hub_server.add_repo("org/noweights", files={n: (ckpts["v1"] / n).read_bytes() for n in BASE})
    p = run(hub_server, "download", "org/noweights")
    one_line_error(p, 4, "org/noweights", "has no weights bbx can load", "model.safetensors")
    # inspect needs no weights
    assert probe(hub_server, ("resolve", "org/noweights", None))[0]["files"] == BASE


def test_invalid_ids_and_revisions_make_no_request(hub_server):
    one_line_error(run(hub_server, "download", "org/na me"), 4, "not a valid hub repo id")
    one_line_error(run(hub_server, "download", "org/tiny", "--revision", "a..b"), 2, "not a valid branch")
    one_line_error(run(hub_server, "download", "resnet-50", "--revision", "main branch"), 2, "--revision")
    assert hub_server.requests == []


def test_debug_shows_the_traceback(hub_server):
    p = run(hub_server, "--debug", "download", "org/nope")
    assert p.returncode != 0 and "Traceback" in p.stderr and "RepoNotFoundError" in p.stderr


def test_download_refuses_a_folder(tmp_path):
    p = bbx_proc("download", str(tmp_path))
    one_line_error(p, 2, "local checkpoint folder")


# ---------------------------------------------------------------------------------------------
# aliases


def test_alias_revision_reads_the_hub_config(hub_server, ckpts):
    sha = hub_server.add_repo("microsoft/resnet-18", ckpts["v1"])
    embedded, at_main = probe(hub_server, ("resolve", "resnet-18", None), ("resolve", "resnet-18", "main"))
    assert embedded["commit"] is None and embedded["last"] == 512 and embedded["files"] == []
    assert at_main["commit"] == sha and at_main["repo_id"] == "microsoft/resnet-18" and at_main["last"] == 32
    assert at_main["source"] == "alias"
    assert [r.path for r in hub_server.requests][0] == "/api/models/microsoft/resnet-18/revision/main"
    out = fetched(run(hub_server, "download", "resnet-18", "--json"))
    assert out["repo_id"] == "microsoft/resnet-18" and out["commit"] == sha and out["model"] == "resnet-18"


# ---------------------------------------------------------------------------------------------
# in-process units


@pytest.mark.parametrize("repo_id", ["org/name", "microsoft/resnet-50", "a/b", "Org_1/x.y-z"])
def test_valid_repo_ids(repo_id):
    download.validate_repo_id(repo_id)


@pytest.mark.parametrize(
    "repo_id",
    ["name", "a/b/c", "org/na me", "org/", "/name", "org/a..b", "org/a--b", "org/x.git", "org/-x", "o" * 97 + "/x"],
)
def test_invalid_repo_ids(repo_id):
    with pytest.raises(ModelError, match="not a valid hub repo id"):
        download.validate_repo_id(repo_id)


@pytest.mark.parametrize("rev", ["main", "v1.0", "refs/pr/1", "a" * 40, "release_2024-01", "feature/x+y"])
def test_valid_revisions(rev):
    download.validate_revision(rev)


@pytest.mark.parametrize(
    "rev", ["", "a b", "a..b", "-x", "/x", "x/", "x.", "a//b", "x.lock", "a/.b", "a~1", "a^", "a:b", "a\nb", "é"]
)
def test_invalid_revisions(rev):
    with pytest.raises(UsageError, match="--revision"):
        download.validate_revision(rev)


# ---------------------------------------------------------------------------------------------
# progress bars: on a terminal only


def _on_a_terminal(hub, *args: str) -> tuple[int, str]:
    """Run bbx with stderr on a pseudo-terminal (120 columns); its exit status and what it showed."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    full = proc_env(**hub.env())
    with os.fdopen(leader, "rb") as tty:
        p = subprocess.run([sys.executable, "-m", "bbx", *args], env=full, stderr=follower, stdout=subprocess.PIPE)
        os.close(follower)
        shown = b""
        try:
            while chunk := tty.read1(65536):
                shown += chunk
        except OSError:  # EIO once the writer is gone
            pass
    return p.returncode, shown.decode(errors="replace")


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_progress_bars_on_a_terminal_only(hub_server, ckpts):
    hub_server.add_repo("org/tiny", ckpts["v1"])
    hub_server.add_repo("org/other", ckpts["v2"])
    piped = run(hub_server, "download", "org/tiny")
    assert piped.returncode == 0 and "%|" not in piped.stderr and "3 downloaded" in piped.stderr
    code, shown = _on_a_terminal(hub_server, "download", "org/other", "--quiet")
    assert code == 0 and shown == ""
    hub_server.add_repo("org/other", ckpts["v1"])  # a new commit: files to fetch again
    code, shown = _on_a_terminal(hub_server, "download", "org/other")
    assert code == 0 and "model.safetensors: 100%|" in shown and "3 downloaded" in shown


# ---------------------------------------------------------------------------------------------
# bbx extract through the hub


def test_download_then_offline_extract_records_the_commit(hub_server, ckpts, tmp_path):
    from tests.conftest import make_photos

    sha = hub_server.add_repo("org/tiny", ckpts["v1"])
    fetched(run(hub_server, "download", "org/tiny", "--json"))
    imgs = tmp_path / "imgs"
    make_photos(imgs, [(120, 90), (90, 120)])
    hub_server.clear_log()
    out = tmp_path / "f.h5"
    p = run(hub_server, "extract", "--model", "org/tiny", "-o", str(out), "--json", str(imgs), offline=True)
    report = fetched(p)
    assert report["done"] == 2 and report["checkpoint"] == "org/tiny" and report["revision"] == sha
    assert hub_server.requests == []
    import h5py

    with h5py.File(out) as f:
        assert f.attrs["checkpoint"] == "org/tiny" and f.attrs["revision"] == sha


def test_extract_of_a_pinned_revision_records_its_sha(hub_server, ckpts, tmp_path):
    from tests.conftest import make_photos

    old = hub_server.add_repo("org/tiny", ckpts["v1"], tags=("v1",))
    hub_server.add_repo("org/tiny", ckpts["v2"])
    make_photos(tmp_path / "imgs", [(100, 100)])
    out = tmp_path / "f.safetensors"
    report = fetched(
        run(
            hub_server,
            "extract",
            "-m",
            "org/tiny",
            "--revision",
            "v1",
            "-o",
            str(out),
            "--json",
            str(tmp_path / "imgs"),
        )
    )
    assert report["revision"] == old and report["stages"][0]["channels"] == 32
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert f.metadata()["revision"] == old


def test_extract_with_weights_that_do_not_fit_is_one_line(hub_server, ckpts, tmp_path):
    from tests.conftest import make_photos

    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(ckpts["v1"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_sizes"] = [8, 16, 16, 40]
    (bad / "config.json").write_text(json.dumps(cfg))
    hub_server.add_repo("org/bad", bad)
    make_photos(tmp_path / "imgs", [(100, 100)])
    p = run(hub_server, "extract", "-m", "org/bad", "-o", str(tmp_path / "f.h5"), str(tmp_path / "imgs"))
    one_line_error(p, 4, "do not fit", "wrong shapes")
    assert not (tmp_path / "f.h5").exists() and not (tmp_path / "f.h5.partial").exists()


def test_a_refused_output_fetches_no_weights(hub_server, ckpts, tmp_path):
    """An output the run could not write is refused before the weights are downloaded."""
    import os

    from tests.conftest import make_photos

    hub_server.add_repo("org/tiny", ckpts["v1"])
    make_photos(tmp_path / "imgs", [(100, 100)])
    os.mkfifo(tmp_path / "f.h5")
    p = run(hub_server, "extract", "-m", "org/tiny", "-o", str(tmp_path / "f.h5"), str(tmp_path / "imgs"))
    one_line_error(p, 3, "is a FIFO")
    assert hub_server.transfers("config.json") and not hub_server.transfers("model.safetensors")


def test_download_refuses_a_local_folder(tiny_resnet):
    one_line_error(bbx_proc("download", str(tiny_resnet)), 2, "local checkpoint folder", "nothing to download")
