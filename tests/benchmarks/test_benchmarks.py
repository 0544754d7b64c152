"""The benchmark scripts run end to end on tiny inputs (their figures are not checked here:
speed is measured by running them, see README "Speed")."""

from __future__ import annotations

import json

import pytest

from benchmarks import memory, throughput, train_speed


def test_throughput_benchmark_reports_every_key(tmp_path, capsys):
    result = throughput.main(
        [
            "--train-per-class",
            "4",
            "--test-per-class",
            "3",
            "--file-size",
            "64",
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--data",
            str(tmp_path),
        ]
    )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result
    for key in ("frozen_speedup", "finetune_speedup", "eval_speedup", "train_peak_fraction"):
        assert result[key] > 0, key
    assert (tmp_path / "png64-4-3" / ".complete").is_file()  # generated data is reused by the next run


@pytest.mark.slow
def test_memory_benchmark_measures_a_child_process(tmp_path):
    result = memory.main(
        ["--images", "40", "--image-size", "32", "--steps", "2", "--batch-size", "4", "--data", str(tmp_path)]
    )
    assert result["images_in_store"] == 40
    assert result["store_size_ratio_rgb_over_gray"] == pytest.approx(3.0, rel=0.01)  # one channel, not three
    for setting in ("default", "low_memory", "rgb_rows"):
        run = result[setting]
        assert run["images_seen"] == 8
        assert run["peak_kib"] >= run["rss_before_training_kib"] > 0 and run["peak_anon_kib"] > 0


def test_train_speed_benchmark_compares_the_pipeline_with_plain_steps(capsys):
    result = train_speed.main(
        ["--archs", "resnet18", "--image-size", "32", "--batch-size", "4", "8", "--eval-batch-size", "8",
         "--steps", "2", "--warmup", "1", "--check-every", "2"]
    )  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert set(result["runs"]) == {"resnet18@4", "resnet18@8"} and result["torch"] and result["device"]
    for figures in result["runs"].values():
        rates = {k: v for k, v in figures.items() if not k.endswith("ratio")}
        assert set(rates) == {"plain_eager", "pipeline_eager", "plain_scoring_eager", "pipeline_scoring_eager"}
        assert all(rate > 0 for rate in rates.values())
        assert figures["train_ratio"] == round(figures["pipeline_eager"] / figures["plain_eager"], 3)
        assert figures["scoring_ratio"] == round(figures["pipeline_scoring_eager"] / figures["plain_scoring_eager"], 3)


def test_decode_speed_benchmark_times_both_ways_and_compares_the_stores(capsys):
    from benchmarks import decode_speed

    result = decode_speed.main(["--images", "20", "--size", "64", "--image-size", "32", "--device", "cpu",
                                "--workers", "2"])  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    assert result["films"] == 20 and result["cpu_images_per_s"] > 0 and result["device_images_per_s"] > 0
    assert result["ratio"] == round(result["device_images_per_s"] / result["cpu_images_per_s"], 3)
    assert result["identical"] and result["rows_differing"] == 0 and result["max_grey_difference"] == 0


def test_scale_benchmark_scores_the_leak_check_from_verify_s_report(tmp_path):
    """benchmarks.scale reads verify's report: a pair of a planted copy with its original is a hit, any other
    pair across splits a false alarm; recall per alteration."""
    from benchmarks import scale

    planted = {scale._copy_name(kind, i): scale._film_name(i) for i, kind in enumerate(scale.ALTERATIONS)}
    copies = list(planted)
    report = tmp_path / "data_report.md"
    report.write_text(
        "# Dataset report\n\n## Identical images across splits (leaks): 0\n\n"
        "## Near duplicates across splits (leaks): 3\n"
        f"- {planted[copies[0]]} ~ {copies[0]}\n- {copies[1]} ~ {planted[copies[1]]}\n"
        "- train/normal/000003.png ~ test/normal/000019.png\n\n## Patients in several splits (leaks): 0\n"
    )
    got = scale.leak_check(report, planted)
    assert got["pairs_across"] == 3 and got["false_alarms"] == 1 and got["identical_across"] == 0
    assert got["recall"] == {"half size": 1.0, "JPEG q70": 1.0, "darkened x0.7": 0.0}
