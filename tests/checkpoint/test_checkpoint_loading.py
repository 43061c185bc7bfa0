"""Loading official and own checkpoints with ``CATSegCheckpointer`` (strict, one named error)."""
import pytest
import torch
from official_reference import AGG, CLIP, make_official_state_dict

from cat_seg.checkpoint import CATSegCheckpointer, CheckpointFormatError, CheckpointMismatchError


def test_vitb_official_weights_land_where_the_official_layout_puts_them(build_cfg):
    """The full ViT-B-sized official state dict, loaded into configs/vitb_384.yaml (CLIP_WEIGHTS none)."""
    from detectron2.modeling import build_model

    official = make_official_state_dict("vit-b", seed=1)
    model = build_model(build_cfg("configs/vitb_384.yaml", MODEL__SEM_SEG_HEAD__CLIP_WEIGHTS="none"))
    checkpointer = CATSegCheckpointer(model)
    report = checkpointer.load_state({"model": official}, "vit-b official")  # load() minus the file read
    ours = model.state_dict()
    spots = {
        "backbone.clip.visual.transformer.resblocks.11.attn.q_proj_weight": CLIP + "visual.transformer.resblocks.11.attn.q_proj_weight",
        "backbone.clip.visual.transformer.resblocks.0.attn.k_proj_weight": CLIP + "visual.transformer.resblocks.0.attn.k_proj_weight",
        "backbone.clip.transformer.resblocks.5.attn.v_proj_weight": CLIP + "transformer.resblocks.5.attn.v_proj_weight",
        "backbone.clip.visual.transformer.resblocks.7.attn.in_proj_bias": CLIP + "visual.transformer.resblocks.7.attn.in_proj_bias",
        "backbone.clip.visual.positional_embedding": CLIP + "visual.positional_embedding",
        "backbone.clip.token_embedding.weight": CLIP + "token_embedding.weight",
        "backbone.clip.logit_scale": CLIP + "logit_scale",
        "sem_seg_head.aggregator.decoder.blocks.0.conv.4.bias": AGG + "decoder1.conv.double_conv.4.bias",
        "sem_seg_head.aggregator.decoder.blocks.1.up.weight": AGG + "decoder2.up.weight",
        "sem_seg_head.aggregator.cost_embed.weight": AGG + "conv1.weight",
        "sem_seg_head.aggregator.layers.1.spatial.block_2.attn.k.weight": AGG + "layers.1.swin_block.block_2.attn.k.weight",
        "sem_seg_head.aggregator.layers.0.classes.padding_tokens": AGG + "layers.0.attention.padding_tokens",
        "sem_seg_head.aggregator.layers.1.classes.mlp.0.weight": AGG + "layers.1.attention.MLP.0.weight",
        "sem_seg_head.guidance_upsample.0.weight": "upsample1.weight",
        "sem_seg_head.guidance_upsample.1.weight": "upsample2.weight",
    }
    for our_key, official_key in spots.items():
        assert torch.equal(ours[our_key], official[official_key]), our_key
    # every model tensor came from the checkpoint (none left at its random init)
    sources = {m.target: m.source for m in report.mapped}
    assert set(sources) == set(ours)
    for our_key, tensor in ours.items():
        assert torch.equal(tensor, official[sources[our_key]]), our_key
    assert len(ours) == len(official) - 2  # the two attn_mask buffers are recomputed


def test_model_wrapper_and_training_extras_are_ignored(tiny_model, official_tiny, official_tiny_file):
    model = tiny_model("b", seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = optimizer.state_dict()["param_groups"][0]["lr"]
    checkpointer = CATSegCheckpointer(model, optimizer=optimizer)
    extra = checkpointer.load(official_tiny_file)  # as if resuming: official training state is not ours
    assert extra == {}
    assert optimizer.state_dict()["param_groups"][0]["lr"] == before
    assert torch.equal(model.state_dict()["sem_seg_head.guidance_upsample.1.bias"], official_tiny["upsample2.bias"])


def test_bare_state_dict_and_module_prefix(tiny_model, official_tiny, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"module." + k: v for k, v in official_tiny.items()}, path)
    model = tiny_model("b", seed=5)
    CATSegCheckpointer(model).resume_or_load(str(path), resume=False)
    assert torch.equal(model.state_dict()["sem_seg_head.aggregator.decoder.head.weight"], official_tiny[AGG + "head.weight"])


def _save(tmp_path, state, name="bad.pth"):
    path = tmp_path / name
    torch.save({"model": state}, path)
    return str(path)


@pytest.mark.parametrize("corruption,fragments", [
    ("missing", ["1 missing key(s)", "sem_seg_head.aggregator.layers.1.classes.padding_tokens"]),
    ("shape", ["1 shape mismatch(es)", "sem_seg_head.aggregator.cost_embed.weight [32, 1, 5, 5] vs model [32, 1, 7, 7]"]),
    ("unknown", ["1 unknown official key(s)", AGG + "layers.0.swin_block.block_1.attn.relative_position_bias_table"]),
    ("many_missing", ["40 missing key(s)", "(+35 more)"]),
])
def test_corrupted_official_checkpoint_names_the_keys(tiny_model, official_tiny, tmp_path, corruption, fragments):
    state = dict(official_tiny)
    if corruption == "missing":
        del state[AGG + "layers.1.attention.padding_tokens"]
    elif corruption == "shape":
        state[AGG + "conv1.weight"] = torch.zeros(32, 1, 5, 5)
    elif corruption == "unknown":
        state[AGG + "layers.0.swin_block.block_1.attn.relative_position_bias_table"] = torch.zeros(49, 2)
    else:
        for key in [k for k in state if ".transformer.resblocks.1." in k and "visual" not in k][:12] + \
                   [k for k in state if ".visual.transformer.resblocks.3." in k][:14] + \
                   [k for k in state if k.startswith(AGG + "layers.1.swin_block.block_1.")][:14]:
            del state[key]
    model = tiny_model("b", seed=7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError) as info:
        CATSegCheckpointer(model).resume_or_load(_save(tmp_path, state), resume=False)
    message = str(info.value)
    assert "\n" not in message and "nothing loaded" in message
    for fragment in fragments:
        assert fragment in message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was loaded


def test_official_checkpoint_for_another_architecture(tiny_model, official_tiny_file):
    """The message starts with how the two CLIP image towers differ (read from the tensors),
    before the key lists, and ends with which config goes with which released checkpoint."""
    model = tiny_model("l")  # tiny ViT-L-like CLIP: different widths and depth
    with pytest.raises(CheckpointMismatchError, match=r"shape mismatch.*configs/vitb_384.yaml") as info:
        CATSegCheckpointer(model).resume_or_load(official_tiny_file, resume=False)
    state = model.state_dict()
    width = state["backbone.clip.visual.conv1.weight"].shape[0]
    blocks = len({k.split(".")[5] for k in state if k.startswith("backbone.clip.visual.transformer.resblocks.")})
    message = str(info.value)
    assert message.startswith(f"checkpoint {official_tiny_file} does not fit the model (its CLIP image tower has "
                              f"width ")
    assert f"the config's width {width}, {blocks} blocks, patch " in message.split("nothing loaded")[0]


def test_own_checkpoint_resume_and_strictness(tiny_model, tmp_path):
    model = tiny_model("b", seed=1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    trainable[0].grad = torch.ones_like(trainable[0])
    optimizer.step()
    CATSegCheckpointer(model, str(tmp_path), optimizer=optimizer).save("model_0000009", iteration=9)

    fresh = tiny_model("b", seed=2)
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-3)
    checkpointer = CATSegCheckpointer(fresh, str(tmp_path), optimizer=fresh_optimizer)
    extra = checkpointer.resume_or_load("", resume=True)
    assert extra == {"iteration": 9}
    assert checkpointer.last_report.layout == "ours"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1

    state = torch.load(tmp_path / "model_0000009.pth", weights_only=True)["model"]
    del state["sem_seg_head.aggregator.decoder.head.bias"]
    state["sem_seg_head.aggregator.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"1 missing key.*decoder\.head\.bias.*1 unexpected key.*extra\.weight"):
        CATSegCheckpointer(fresh).resume_or_load(_save(tmp_path, state, "own_bad.pth"), resume=False)


@pytest.mark.parametrize("content,match", [
    (b"this is not a checkpoint", "not a readable torch checkpoint"),
    ({"model": {"encoder.weight": torch.zeros(1)}}, "neither the official CAT-Seg layout"),
    (torch.zeros(3), "holds a Tensor"),
])
def test_unreadable_or_unknown_files(tiny_model, tmp_path, content, match):
    path = tmp_path / "weird.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointFormatError, match=match):
        CATSegCheckpointer(tiny_model("b")).resume_or_load(str(path), resume=False)


def test_missing_folder_and_unpicklable_files_are_checkpoint_errors(tiny_model, tmp_path):
    """What detectron2's loader leaves as an AssertionError ("Checkpoint ... not found!") or an
    unpickling error of a .pkl is one CheckpointFormatError naming the file."""
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"this is not a pickle")
    cases = {str(tmp_path / "nothere.pth"): f"checkpoint {tmp_path / 'nothere.pth'} not found",
             str(tmp_path): f"checkpoint {tmp_path} is a directory, not a checkpoint file",
             str(garbage): f"{garbage} is not a readable detectron2 .pkl checkpoint (UnpicklingError: "}
    for path, message in cases.items():
        with pytest.raises(CheckpointFormatError) as info:
            CATSegCheckpointer(tiny_model("b")).load(path)
        assert str(info.value).startswith(message)


def test_a_detectron2_pkl_is_checked_before_the_run_as_the_load_reads_it(tmp_path, tiny_model):
    """A .pkl was left to the load: one without '__author__' passed the checks and failed at
    the load with detectron2's jargon ("matching heuristics"); now both say what to do, and a
    .pkl with '__author__' (detectron2's own format) fits and loads."""
    import pickle

    from cat_seg.checkpoint import CATSegCheckpointer, CheckpointError
    from cat_seg.checkpoint.catseg_checkpointer import check_checkpoint_fits

    model = tiny_model("b")
    arrays = {key: value.numpy() for key, value in model.state_dict().items()}
    plain, authored = tmp_path / "plain.pkl", tmp_path / "authored.pkl"
    plain.write_bytes(pickle.dumps({"model": arrays}))
    authored.write_bytes(pickle.dumps({"model": arrays, "__author__": "me"}))
    message = (f"{plain}: a .pkl without an '__author__' entry, which detectron2 reads as model-zoo weights matched "
               "by name heuristics; CAT-Seg checkpoints are matched exactly: save {'model': state_dict} with "
               "torch.save as a .pth, or add '__author__' to the pickled dict")
    for check in (lambda: check_checkpoint_fits(model, str(plain)),
                  lambda: CATSegCheckpointer(tiny_model("b", seed=1)).load(str(plain))):
        with pytest.raises(CheckpointError) as info:
            check()
        assert str(info.value) == message
    check_checkpoint_fits(model, str(authored))
    other = tiny_model("b", seed=1)
    CATSegCheckpointer(other).load(str(authored))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        check_checkpoint_fits(tiny_model("l"), str(authored))


def test_resuming_an_official_runs_checkpoint_says_what_it_is(official_tiny_file, tmp_path, tiny_model):
    """An official run's checkpoint (model, optimizer, scheduler and iteration in the official
    layout) as OUTPUT_DIR's last checkpoint: --resume said it "holds no training state", which it
    does hold, in a form cat-seg does not resume. Said as such before the run (train_net) and by
    the trainer (scripts of one's own); loading its weights without --resume works."""
    import shutil

    from cat_seg.checkpoint import CATSegCheckpointer, CheckpointError
    from cat_seg.cli import train_net
    from cat_seg.cli.errors import UserError
    from cat_seg.engine import Trainer

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(official_tiny_file, out / "model_0079999.pth")
    (out / "last_checkpoint").write_text("model_0079999.pth")
    args = train_net.build_parser().parse_args(
        ["--config-file", "configs/quick_schedules/tiny_vitb_cpu.yaml", "--resume", "OUTPUT_DIR", str(out)])
    cfg = train_net.load_config(args)
    with pytest.raises(UserError) as info:
        train_net.check_resume(cfg)
    assert str(info.value) == (
        f"--resume: {out / 'model_0079999.pth'} is a checkpoint of the official code, whose training state "
        "(optimizer, schedule, data order) cat-seg does not resume; train from its weights with MODEL.WEIGHTS "
        "<file> without --resume, in another OUTPUT_DIR")
    # the trainer's own check, on what its checkpointer loaded
    model = tiny_model("b").eval()
    checkpointer = CATSegCheckpointer(model, save_dir=str(out))
    checkpointer.resume_or_load("", resume=True)
    assert checkpointer.last_report.layout == "official"
    trainer = Trainer.__new__(Trainer)  # the check alone: no data, no training loop
    trainer.checkpointer, trainer.cfg = checkpointer, cfg
    with pytest.raises(CheckpointError, match=r"is a checkpoint of the official code, whose training state"):
        Trainer.resume_or_load(trainer, resume=True)
