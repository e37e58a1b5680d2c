"""One description of a run's settings: the Config fields, from which the identity, the
augmentation defaults and the command line derive."""
import dataclasses
import subprocess
import sys

import pytest

from odc_mini import Config
from odc_mini.study import cli
from odc_mini.augment import AugmentConfig
from odc_mini.config import AUGMENT_REFERENCE, RUNTIME_FIELDS


def test_identity_is_every_field_but_where_and_how_it_runs():
    names = {f.name for f in dataclasses.fields(Config)}
    assert set(RUNTIME_FIELDS) == {"data_root", "download", "device", "precision", "compile"}
    cfg = Config(profile="quick")
    assert set(cfg.identity()) == names - set(RUNTIME_FIELDS)
    moved = Config(profile="quick", data_root="/x", download=True, device="cpu")
    assert moved.key() == cfg.key() and not moved.differences(cfg)
    other = Config(profile="quick", momentum=0.3)
    assert other.key() != cfg.key()
    assert other.differences(cfg) == ["momentum (saved 0.5, now 0.3)"]
    # a saved dict may carry runtime fields: they are not compared
    assert not cfg.differences({**cfg.to_dict(), "device": "cuda", "compile": True})


def test_augmentation_defaults_are_written_once():
    full = AugmentConfig.of(Config(profile="full"))
    assert full == AugmentConfig()                 # the full profile keeps the reference
    reference = AugmentConfig()
    assert reference.crop_scale == (AUGMENT_REFERENCE["crop_min_scale"], 1.0)
    for key in ("brightness", "contrast", "saturation", "hue", "jitter_p", "grayscale_p"):
        assert getattr(reference, key) == AUGMENT_REFERENCE[key]
    quick = AugmentConfig.of(Config(profile="quick"))
    assert (quick.saturation, quick.hue, quick.jitter_p) == (0.4, 0.1, 0.8)


def test_every_field_has_a_flag_that_sets_it():
    parser = cli.build_parser()
    flags = cli.config_flags()
    assert set(flags) == {f.name for f in dataclasses.fields(Config)} - {"method", "profile"}
    values = {"kmeans_iters": "7", "knn_temperature": "0.5", "sampler": "permutation",
              "device": "cpu", "subset": "5000", "pca_dim": "12"}
    argv = ["train", "--out", "x", "--no-reweight", "--cosine-centroids"]
    for name, value in values.items():
        argv += ["--" + name.replace("_", "-"), value]
    cfg = cli.config_from_args(parser.parse_args(argv), "odc")
    assert (cfg.kmeans_iters, cfg.knn_temperature, cfg.sampler, cfg.subset, cfg.pca_dim) == \
        (7, 0.5, "permutation", 5000, 12)
    assert cfg.reweight is False and cfg.cosine_centroids is True
    help_text = subprocess.run([sys.executable, "-m", "odc_mini", "train", "--help"],
                               capture_output=True, text=True, check=True).stdout
    for name in flags:
        assert "--" + name.replace("_", "-") in help_text, name
    assert "what is trained (a run's identity)" in help_text and "where and how it runs" in help_text


def test_a_bad_value_is_one_line_from_the_config():
    with pytest.raises(ValueError, match="unknown sampler 'spiral'; accepted: replacement, permutation"):
        cli.config_from_args(cli.build_parser().parse_args(
            ["train", "--out", "x", "--sampler", "spiral"]), "odc")
