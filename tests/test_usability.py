"""What users touch directly: the Python API, the docs' reading examples, the report,
the effective configuration in model.json, --help."""

from __future__ import annotations

import base64
import json
import re
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
from chispa import assert_df_equality

from pmf_spark import PMF
from pmf_spark.config.files import load_config_file, resolve, to_toml
from pmf_spark.config.params import JobConfig, PMFParams

import train_pmf
from helpers import random_ratings

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def job_output(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("usable") / "out"
    assert train_pmf.main(["--output", str(out), "--epochs", "4", "--similar-items", "3"],
                          spark=spark) == 0
    return out


def python_blocks(md: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md, flags=re.S)


def test_docs_reading_examples_run(spark, job_output):
    blocks = python_blocks((ROOT / "docs" / "outputs.md").read_text())
    assert len(blocks) == 4                      # Spark, pandas, DuckDB, without Spark
    for code in blocks:
        exec(compile(code, "docs/outputs.md", "exec"), {"OUT": str(job_output), "spark": spark})


def test_docs_describe_every_table(job_output):
    doc = (ROOT / "docs" / "outputs.md").read_text()
    tables = json.loads((job_output / "_SUCCESS").read_text())["tables"]
    for name in tables:
        assert f"`{name}`" in doc, name
    for p in job_output.iterdir():
        assert p.name in doc, p.name


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_is_self_contained_html_with_the_figures(job_output):
    text = (job_output / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "<script" not in text and "http" not in text.split("<body>")[1]
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', text)
    assert [a for a, _ in images] == ["learning_curves", "rating_distribution",
                                      "error_vs_activity"]
    for _, data in images:
        w, h = png_size(base64.b64decode(data))
        assert w > 300 and h > 200
    meta = json.loads((job_output / "model.json").read_text())
    assert f"{meta['final_metrics']['test_rmse']:.4f}" in text
    assert "most popular" in text and "precision@10" in text
    assert meta["baseline_rmse"] > meta["final_metrics"]["test_rmse"]


def test_effective_config_round_trips_through_model_json(job_output, tmp_path):
    meta = json.loads((job_output / "model.json").read_text())
    job = JobConfig.from_dict(meta["job"])
    model = PMFParams.from_dict({g: meta[g] for g in ("model", "fit", "engine", "ranker")})
    path = tmp_path / "again.toml"
    path.write_text(to_toml(job, model))
    assert resolve(load_config_file(str(path)), None) == (job, model)
    assert model.fit.epochs == 4 and job.similar_items == 3


def test_help_groups_options_with_defaults(capsys):
    assert train_pmf.main(["--help"]) == 0
    text = capsys.readouterr().out
    for group in ("input:", "model:", "output:", "recommendations and evaluation:",
                  "fault tolerance:", "spark and performance:"):
        assert group in text
    options = _options(text)
    assert options["--rank"].startswith("D ") and "(default: 30)" in options["--rank"]
    assert options["--lambda-u"].startswith("LAMBDA ")
    assert options["--lambda-u"].endswith("(default: 12.0; 20.0 with --feedback implicit)")


def _options(text: str) -> dict[str, str]:
    """--flag -> its help text, from argparse's --help."""
    out, flag = {}, None
    for line in text.split("options:", 1)[1].splitlines():
        m = re.match(r"\s{2}(--[\w-]+)(.*)", line)
        if m:
            flag = m.group(1)
            out[flag] = m.group(2)
        elif flag and line.startswith(" " * 6):
            out[flag] += " " + line.strip()
        else:
            flag = None
    return {k: " ".join(v.split()) for k, v in out.items()}


@pytest.mark.parametrize("job", ["train_pmf", "tune"])
def test_help_says_each_default_once_with_placeholders_that_say_what_goes_there(job, capsys):
    import tune

    assert {"train_pmf": train_pmf, "tune": tune}[job].main(["--help"]) == 0
    options = _options(capsys.readouterr().out)
    assert len(options) > 20
    for flag, text in options.items():
        assert "(default: None)" not in text, flag
        assert text.lower().count("default") <= 1 or "(default: " not in text, (flag, text)
        if flag not in ("--help", "--print-config", "--verbose", "--biases", "--clip",
                        "--resume", "--report"):
            assert len(text.split()) > 2, (flag, text)       # a placeholder and a description
    for flag, shown in {"--burn-in": "N", "--warm-start": "DIR", "--users-per-item": "N",
                        "--ratings": "PATH", "--rank": "D", "--user-col": "COL"}.items():
        if flag in options:
            assert options[flag].split()[0] == shown, (flag, options[flag])


def test_help_gives_implicit_runs_their_own_defaults(capsys):
    assert train_pmf.main(["--help"]) == 0
    alpha = _options(capsys.readouterr().out)["--alpha"]
    _, params = resolve(None, {"job": {"feedback": "implicit"}, "params": {}})
    _, explicit = resolve(None, None)
    assert f"(default: {explicit.fit.alpha}; {params.fit.alpha} with --feedback implicit)" \
        in alpha


def test_python_api_fit_transform_save_load(spark, tmp_path):
    pdf = random_ratings(21, 60, 45, 0.3)
    df = spark.createDataFrame(pdf)
    model = PMF(rank=5, epochs=4, blocks=2).fit(df)
    assert model.rank == 5
    pairs = df.select("user", "item").unionByName(
        spark.createDataFrame([(999999, 1000), (100, 424242), (999999, 424242)],
                              "user long, item long"))
    before = model.transform(pairs)
    assert before.where("prediction is null or isnan(prediction)").count() == 0
    recs = model.recommend_for_all_users(5)
    path = str(tmp_path / "model")
    model.save(path)
    loaded = PMF.load(path)
    after = loaded.transform(pairs)
    key = ["user", "item"]
    assert_df_equality(before.orderBy(key), after.orderBy(key), ignore_nullable=True)
    cols = ["user_id", "rank", "item_id"]
    assert_df_equality(recs.select(cols).orderBy(cols),
                       loaded.recommend_for_all_users(5).select(cols).orderBy(cols),
                       ignore_nullable=True)
    # the API's predictions are the trainer's: compare with the factor arithmetic
    p = before.where("user = 100 and item = 1000").first()["prediction"]
    uf = loaded.user_factors.where("user_id = 100").first()
    itf = loaded.item_factors.where("item_id = 1000").first()
    m = loaded.meta
    z = np.dot(uf.features, itf.features) + uf.bias + itf.bias
    assert p == pytest.approx(np.clip(m["mu"] + m["sigma"] * z, *m["rating_range"]))
    # the saved model is also a job output: recommend.py can read it
    assert (Path(path) / "_SUCCESS").is_file() and (Path(path) / "recommendations").is_dir()
    with pytest.raises(Exception, match="did you mean 'rank'"):
        PMF(rnak=3)
    assert tomllib.loads(to_toml(JobConfig(), model.pmf_params))["model"]["rank"] == 5
