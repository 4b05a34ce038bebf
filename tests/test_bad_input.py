"""Every kind of bad input: a one-line error naming file/column/value, exit code 2."""

from __future__ import annotations

import pytest

import train_pmf

pytestmark = pytest.mark.spark

GOOD_100K = "".join(f"{u}\t{i}\t{(u * i) % 5 + 1}\t{880000000 + u * 100 + i}\n"
                    for u in range(1, 21) for i in range(1, 16))


def run(spark, capsys, tmp_path, *args):
    code = train_pmf.main([*args, "--output", str(tmp_path / "out"), "--epochs", "1",
                           "--rank", "2"], spark=spark)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    return code, lines, err


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return str(path)


@pytest.mark.parametrize("name,text,fmt,expect", [
    ("u.data", GOOD_100K + "7\t8\n", "movielens-100k",
     r"u.data: 1 line\(s\) with the wrong number of fields \(expected 4 tab-separated fields"),
    ("u.data", GOOD_100K + "7\t8\tgood\t1\n", "movielens-100k",
     r"u.data, column 'rating': non-numeric rating 'good' \(1 row\(s\)\)"),
    ("u.data", GOOD_100K + "7\t99\tNaN\t1\n", "movielens-100k",
     r"u.data, column 'rating': non-finite rating 'NaN'"),
    ("u.data", GOOD_100K + "7\t99\t6\t1\n", "movielens-100k",
     r"u.data, column 'rating': rating 6 \(user 7, item 99\) is outside the scale \[1, 5\]"),
    ("u.data", GOOD_100K + "\t99\t3\t1\n", "movielens-100k",
     r"u.data, column 'user': 1 row\(s\) with a missing id"),
    ("u.data", GOOD_100K + "abc\t99\t3\t1\n", "movielens-100k",
     r"u.data, column 'user': non-integer id 'abc'"),
    ("u.data", "", "movielens-100k", r"u.data: no ratings \(empty input\)"),
    ("r.dat", "1::2::3::4\n1::3::x::5\n", "movielens-dat",
     r"r.dat, column 'rating': non-numeric rating 'x'"),
    ("r.csv", "user,item,rating\n1.5,2,3\n2,3,4\n", "csv",
     r"r.csv, column 'user': fractional id 1.5"),
    ("r.csv", "u,i,score\n1,2,3\n", "csv", r"r.csv: cannot find the user column \(columns: u, i, "
                                           r"score\); name it with --user-col"),
    ("u.data", "1\t2\t3\t4\n", "movielens-100k", r"1 rating\(s\); training needs at least 2"),
])
def test_bad_files(spark, capsys, tmp_path, name, text, fmt, expect):
    path = write(tmp_path, name, text)
    code, lines, err = run(spark, capsys, tmp_path, "--ratings", path, "--format", fmt)
    assert code == 2, err
    assert len(lines) == 1, err
    import re
    assert re.search(expect, lines[0]), lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_path_and_unknown_format(spark, capsys, tmp_path):
    code, lines, _ = run(spark, capsys, tmp_path, "--ratings", str(tmp_path / "nope.dat"))
    assert code == 2 and lines == [f"error: {tmp_path / 'nope.dat'}: no such file or directory"]
    code, lines, _ = run(spark, capsys, tmp_path, "--ratings", "x", "--format", "tsv")
    assert code == 2 and len(lines) == 1 and "invalid choice: 'tsv'" in lines[0]
    path = write(tmp_path, "ratings.json", "{}")
    code, lines, _ = run(spark, capsys, tmp_path, "--ratings", path)
    assert code == 2 and "cannot tell the format from the file name; pass --format" in lines[0]


def test_not_parquet(spark, capsys, tmp_path):
    path = write(tmp_path, "r.parquet", "not parquet at all")
    code, lines, err = run(spark, capsys, tmp_path, "--ratings", path)
    assert code == 2 and len(lines) == 1 and "not readable as Parquet" in lines[0], err


@pytest.mark.parametrize("flag,value,expect", [
    ("--rank", "0", "error: rank: must be >= 1, got 0"),
    ("--lambda-u", "-1", "error: lambda_u: must be >= 0.0, got -1.0"),
    ("--test-fraction", "1.5", "error: test_fraction: must be < 1.0, got 1.5"),
    ("--test-fraction", "0", "error: test_fraction: must be > 0.0, got 0.0"),
    ("--rank", "abc", "error: argument --rank: invalid int value: 'abc' (see --help)"),
])
def test_bad_parameters(spark, capsys, tmp_path, flag, value, expect):
    code = train_pmf.main([flag, value, "--output", str(tmp_path / "o")], spark=spark)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [expect]


def test_duplicates_keep_latest_by_timestamp(spark, capsys, tmp_path):
    # user 1 rated item 1 twice: 1 at t=10, then 5 at t=20 -> keep 5
    text = GOOD_100K.replace("1\t1\t2\t880000101\n", "1\t1\t1\t10\n") + "1\t1\t5\t20\n"
    path = write(tmp_path, "u.data", text)
    code, lines, err = run(spark, capsys, tmp_path, "--ratings", path, "--test-fraction", "0.3")
    assert code == 0, err
    assert "dropped 1 row(s)" in err
    import json
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["data"]["duplicates_dropped"] == 1
    assert meta["data"]["n_train"] + meta["data"]["n_test"] == 300


def test_duplicates_without_timestamp_or_with_error_policy(spark, capsys, tmp_path):
    path = write(tmp_path, "r.csv", "user,item,rating\n1,2,3\n1,2,4\n" +
                 "".join(f"{u},{i},3\n" for u in range(3, 9) for i in range(5)))
    code, lines, _ = run(spark, capsys, tmp_path, "--ratings", path)
    assert code == 2 and "1 duplicate rating(s) of the same (user, item), e.g. user 1 item 2; " \
                         "there is no timestamp column" in lines[0]
    path = write(tmp_path, "u.data", GOOD_100K + "1\t1\t5\t20\n")
    code, lines, _ = run(spark, capsys, tmp_path, "--ratings", path, "--on-duplicate", "error")
    assert code == 2 and "(--on-duplicate error)" in lines[0]


def test_string_ids_are_kept(spark, capsys, tmp_path):
    rows = "".join(f"u{u},item-{i},{(u + i) % 5 + 1}\n" for u in range(12) for i in range(9))
    path = write(tmp_path, "r.csv", "user,item,rating\n" + rows)
    code, _, err = run(spark, capsys, tmp_path, "--ratings", path)
    assert code == 0, err
    ids = spark.read.parquet(str(tmp_path / "out" / "user_factors")).select("user_id")
    assert dict(ids.dtypes)["user_id"] == "string"
    assert sorted(r[0] for r in ids.collect()) == sorted(f"u{u}" for u in range(12))


def test_headerless_csv_is_read_by_position(spark, capsys, tmp_path):
    # user, item, rating, timestamp with no header line (as rating dumps often come);
    # user 1 rated item 1 twice: the later timestamp must win, so the fourth field
    # really is read as the timestamp
    rows = "".join(f"A{u}X,B{i:03d},{(u + i) % 5 + 1}.0,{1000 + u * 10 + i}\n"
                   for u in range(12) for i in range(9))
    path = write(tmp_path, "dump.csv", rows + "A1X,B001,5.0,99999\n")
    code, _, err = run(spark, capsys, tmp_path, "--ratings", path)
    assert code == 0, err
    assert "has no header row: reading its columns by position as _c0, _c1, _c2, _c3" in err
    import json
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["data"]["duplicates_dropped"] == 1
    assert meta["data"]["n_train"] + meta["data"]["n_test"] == 12 * 9
    ids = spark.read.parquet(str(tmp_path / "out" / "user_factors")).select("user_id")
    assert sorted(r[0] for r in ids.collect()) == sorted(f"A{u}X" for u in range(12))
    # two fields and no header: named, one line
    path = write(tmp_path, "two.csv", "1,2\n3,4\n")
    code, lines, _ = run(spark, capsys, tmp_path, "--ratings", path)
    assert code == 2 and len(lines) == 1 and "two.csv: no header row and 2 field(s)" in lines[0]


def test_integer_ids_have_one_type_whatever_the_header(spark, capsys, tmp_path):
    # the same integer ids, with and without a header row, give integer id columns
    # (they came back as strings without the header); '007' keeps its column strings
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pmf_spark.inputs.read import load_ratings

    rows = "".join(f"{u},{i},{(u * i) % 5 + 1}\n" for u in range(1, 13) for i in range(1, 10))
    read = {}
    for name, text in (("bare", rows), ("headed", "user,item,rating\n" + rows),
                       ("zeros", rows.replace("\n7,", "\n007,"))):
        clean = load_ratings(spark, write(tmp_path, f"{name}.csv", text))
        read[name] = (clean.id_type, dict(clean.df.dtypes)["user"], dict(clean.df.dtypes)["item"])
        ids = [r[0] for r in clean.df.select("user").distinct().collect()]
        assert len(ids) == 12 and ("007" in ids if name == "zeros" else 7 in ids)
    assert read["bare"] == read["headed"] == ("long", "bigint", "bigint")
    assert read["zeros"] == ("string", "string", "string")
    # and what the job writes from the header-less file, as pandas and DuckDB see it
    out = tmp_path / "out"
    code = train_pmf.main(["--ratings", str(tmp_path / "bare.csv"), "--output", str(out),
                           "--epochs", "1", "--rank", "2", "--no-report", "--top-k", "0"],
                          spark=spark)
    assert code == 0, capsys.readouterr().err
    assert [pq.read_table(out / f"{side}_factors").schema.field(f"{side}_id").type
            for side in ("user", "item")] == [pa.int64(), pa.int64()]


def test_tsv_semicolons_and_other_column_names(spark, capsys, tmp_path):
    # a 2-10 scale: "relevant" defaults to 3/4 up the scale, 8, not MovieLens' 4
    rows = "".join(f"{u}\t{i}\t{2 * ((u * i) % 5 + 1)}\n" for u in range(12) for i in range(9))
    path = write(tmp_path, "r.tsv", "User-ID\tISBN\tBook-Rating\n" + rows)
    code, _, err = run(spark, capsys, tmp_path, "--ratings", path)
    assert code == 0, err
    import json
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["data"]["n_train"] + meta["data"]["n_test"] == 12 * 9
    assert meta["rating_range"] == [2.0, 10.0]
    assert meta["ranking"]["model"]["relevance_threshold"] == 8.0
    path = write(tmp_path, "r.csv", '"User-ID";"ISBN";"Book-Rating"\n' + rows.replace("\t", ";"))
    code, _, err = run(spark, capsys, tmp_path, "--ratings", path)
    assert code == 0, err
    assert "fields separated by ';'" in err


def test_relevance_threshold_default_follows_the_scale():
    from pmf_spark.evaluate.metrics import relevance_threshold

    assert relevance_threshold(None, 1, 5) == 4.0          # MovieLens 100K, the seed's
    assert relevance_threshold(None, 0.5, 5) == 4.0        # half-star MovieLens
    assert relevance_threshold(None, 2, 10) == 8.0
    assert relevance_threshold(None, -10, 10) == 5.0
    assert relevance_threshold(3.5, 1, 5) == 3.5           # given wins


def test_output_must_not_contain_the_input_nor_be_foreign(spark, capsys, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = write(data_dir, "u.data", GOOD_100K)
    code = train_pmf.main(["--ratings", path, "--output", str(tmp_path)], spark=spark)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "is the input" in lines[-1] and "or contains it" in lines[-1]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    code = train_pmf.main(["--ratings", path, "--output", str(foreign)], spark=spark)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "exists and is not a pmf-spark output" in lines[-1]
    assert (foreign / "keep.txt").read_text() == "precious"
