"""``tools/benchmark.py --smoke`` prints one valid JSON object per line (infer, train) and nothing else."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIELDS = {
    "mode", "config", "device", "device_name", "torch", "precision", "compile", "options", "opts", "batch",
    "classes", "size", "iters", "warmup", "median_s", "min_s", "times_s", "per_image_s", "cpu_median_s",
    "threads", "peak_memory_bytes", "peak_memory_gib", "memory_kind", "memory_baseline_bytes", "date", "git_commit",
    "smoke", "exact", "tf32", "optimizer",
}
OPTIONS = {"window_attention_4d", "token_layout", "padding_closed_form", "fused_upconv", "skip_pruned_classes",
           "truncate_text",
           "class_chunk_size", "class_chunk_size_effective", "checkpoint_activations", "inference_autocast"}


def test_smoke_prints_json_records():
    proc = subprocess.run([sys.executable, "tools/benchmark.py", "--smoke", "--threads", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)  # hang guard only
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2, proc.stdout
    records = [json.loads(line) for line in lines]
    assert [r["mode"] for r in records] == ["infer", "train"]
    for record in records:
        assert FIELDS <= set(record), FIELDS - set(record)
        assert OPTIONS <= set(record["options"]), OPTIONS - set(record["options"])
        assert record["smoke"] is True and record["device"] == "cpu" and record["precision"] == "fp32"
        assert record["median_s"] > 0 and record["peak_memory_bytes"] > 0
        assert record["classes"] == 40 and len(record["times_s"]) == record["iters"] == 1
        assert record["memory_kind"] in ("cpu_peak_rss", "cpu_lifetime_max_rss")
