"""Models by name: Hub ids resolved from a hand-laid Hugging Face cache (offline), https:// files cached once."""

import http.server
import threading

import pytest
from helpers_hub import add_to_hf_cache

from animatediff_core.errors import CheckpointError
from animatediff_core.io import hub
from animatediff_core.io.checkpoints import load_state_dict


@pytest.fixture()
def hf_cache(tiny_models, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    add_to_hf_cache(home, "tiny-org/sd-tiny", {p: tiny_models / "base" / p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")})
    add_to_hf_cache(home, "tiny-org/motion", {"motion_module.safetensors": tiny_models / "motion_module.safetensors",
                                              "adapter": tiny_models / "motion_adapter"})
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    return home


def test_hub_ids_parse_and_local_paths_win(tmp_path):
    assert hub.parse("org/name") == ("org/name", "")
    assert hub.parse("hf://org/name/sub/file.safetensors") == ("org/name", "sub/file.safetensors")
    assert hub.parse("s3://bucket/key") is None and hub.parse("/abs/path") is None
    (tmp_path / "org" / "name").mkdir(parents=True)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert hub.parse("org/name") is None  # an existing local folder is a path
    finally:
        os.chdir(cwd)


def test_repo_file_and_folder_ids_resolve_offline(hf_cache, tiny_models):
    from animatediff_core.models.motion_formats import load_motion_adapter
    from animatediff_core.models.pipeline import load_base

    base = load_base("tiny-org/sd-tiny")
    assert base.unet.config.block_out_channels
    file = hub.resolve("tiny-org/motion/motion_module.safetensors")
    assert file.endswith("motion_module.safetensors") and str(hf_cache) in file
    assert load_motion_adapter("hf://tiny-org/motion/adapter").config["motion_max_seq_length"] == 32
    assert set(load_state_dict("tiny-org/motion/motion_module.safetensors")) == set(load_state_dict(str(tiny_models / "motion_module.safetensors")))
    with pytest.raises(CheckpointError, match="not found on the Hugging Face Hub or in its cache"):
        hub.resolve("tiny-org/missing-repo")


def test_https_files_are_fetched_once(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("ANIMATEDIFF_CACHE", str(tmp_path / "cache"))
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tiny_models / "checkpoints"), **k)

        def do_GET(self):
            hits.append(self.path)
            return super().do_GET()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/toon_lora.safetensors"
    from animatediff_core.io import bounded

    try:
        with pytest.raises(CheckpointError, match="not public .*--allow-uri"):  # loopback: only when the operator allows it
            load_state_dict(url)
        assert not hits
        bounded.configure(bounded.ReadLimits(allow_uri=[f"http://127.0.0.1:{server.server_address[1]}"]))
        first = load_state_dict(url)
        gets = len(hits)
        second = load_state_dict(url)
    finally:
        bounded.configure(bounded.ReadLimits())
        server.shutdown()
    assert set(first) == set(second) and gets == 1 and len(hits) == gets  # one GET; the second load read the cache
    cache = tmp_path / "cache"
    (entry,) = cache.iterdir()  # named by the URL's hash alone, private to the user
    assert entry.name.endswith(".safetensors") and len(entry.name) == 64 + len(".safetensors")
    assert cache.stat().st_mode & 0o777 == 0o700 and entry.stat().st_mode & 0o777 == 0o600
