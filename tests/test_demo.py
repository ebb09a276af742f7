"""``laworder demo`` end to end at toy size: every stage runs and the report is written."""

import json

from laworder.cli import main as cli


def test_demo_runs_whole_loop_and_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    overrides = ["image_size=32", "num_train=24", "num_test=8", "seg_epochs=1", "seg_batch_size=8",
                 "synth_steps=2", "synth_batch_size=4", "sample_steps=2", "augment_pool_size=8",
                 "synth_backbone_kwargs={preset: tiny}"]
    args = ["demo", "-o", str(out), "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    assert cli(args) == 0
    assert f"report: {out / 'report.md'}" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert set(report["segmentation"]) == {"mk_unet", "order"}
    assert set(report["synthesis"]["objectives"]) == {"uniform", "law"}
    assert set(report["synthesis"]["augmentation"]) == {"real", "real+law"}
    assert report["synthesis"]["augmentation"]["real+law"]["num_extra"] == 8
    pool_manifest = json.loads((out / "pools" / "law_train" / "manifest.json").read_text())
    test_stems = {p.stem for p in (out / "data" / "test" / "masks").iterdir()}
    pool_stems = {p.stem for p in (out / "pools" / "law_train" / "masks").iterdir()}
    assert pool_stems and not pool_stems & test_stems, "the augmentation pool must not use test masks"
    assert pool_manifest
    for figure in ("seg_curves.png", "seg_qualitative.png", "synth_curves.png"):
        assert (out / "figures" / figure).stat().st_size > 0
    assert "Mask-recovery Dice" in (out / "report.md").read_text()
