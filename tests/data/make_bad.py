"""Regenerate the malformed-manifest corpus: `python tests/data/make_bad.py`.

Writes every file of `bad/` (each must be refused: exit 1, nothing loaded, file/line/column named) and of
`edge/` (odd but valid: each must load). One script makes them all so that the binary files (Parquet) and
the byte-level oddities (encodings, NULs, line ends) are reproducible. The output is deterministic (no
randomness, no timestamps; the Parquet bytes depend only on the pyarrow version), so re-running it changes
nothing; `tests/test_bad_inputs.py` checks that the committed files are what this script makes, and holds
what is expected of each file.

The two 10 MB files (`bad/huge_reference_id.csv`, `edge/huge_data_cell.csv`) are one repeated character:
git stores each in a few kilobytes.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
BAD, EDGE = HERE / "bad", HERE / "edge"
URL = "https://cdn.example.com/img"
MB10 = 10 * 1024 * 1024
IMG_HEADER = "reference_id,image_url,camera"
RAW_HEADER = "reference_id,data"


def csv_text(*rows: str, header: str = IMG_HEADER, eol: str = "\n") -> bytes:
    """A manifest from raw text lines (already quoted as needed), UTF-8."""
    return eol.join([header, *rows, ""]).encode("utf-8")


def good_rows(n: int, start: int = 1) -> list[str]:
    return [f"a-{i},{URL}/{i}.jpg,cam{i % 3}" for i in range(start, start + n)]


def jsonl(*lines: object) -> bytes:
    """One line per item: strings verbatim (for invalid JSON), anything else through json.dumps."""
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode("utf-8")


def img(ref: object, n: int = 1) -> dict[str, object]:
    return {"reference_id": ref, "image_url": f"{URL}/{n}.jpg"}


def parquet(columns: dict[str, object] | pa.Table) -> bytes:
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    out = io.BytesIO()
    pq.write_table(table, out, compression="snappy")
    return out.getvalue()


def images_table(n: int) -> dict[str, object]:
    return {
        "reference_id": pa.array([f"p-{i}" for i in range(n)], pa.string()),
        "image_url": pa.array([f"{URL}/{i}.jpg" for i in range(n)], pa.string()),
    }


def utf16(data: bytes, codec: str) -> bytes:
    return data.decode("utf-8").encode(codec)


def corrupt_pages() -> bytes:
    """A Parquet file whose footer is intact (it opens) but whose first data pages are garbage."""
    data = bytearray(parquet(images_table(1000)))
    for i in range(200, 2000):
        data[i] ^= 0x5A
    return bytes(data)


def nested(depth: int) -> str:
    return '{""a"":' * depth + "1" + "}" * depth  # CSV-quoted JSON


# --- bad: every one of these must be refused --------------------------------------------------------------

BAD_FILES: dict[str, Callable[[], bytes]] = {
    # encodings
    "utf16_bom.csv": lambda: utf16(csv_text(*good_rows(2)), "utf-16"),  # BOM + little-endian
    "utf16_be_bom.csv": lambda: b"\xfe\xff" + utf16(csv_text(*good_rows(2)), "utf-16-be"),
    "utf16_nobom.csv": lambda: utf16(csv_text(*good_rows(2)), "utf-16-le"),
    "utf16_bom.jsonl": lambda: utf16(jsonl(img("a")), "utf-16"),
    "utf16_nobom.jsonl": lambda: utf16(jsonl(img("a")), "utf-16-le"),
    "latin1_in_utf8.csv": lambda: csv_text(*good_rows(1), f"caf\xe9-2,{URL}/2.jpg,cam1").replace("é".encode(), b"\xe9"),
    "latin1_in_utf8.jsonl": lambda: jsonl(img("a"), img("caf\xe9", 2)).replace(b"\\u00e9", b"\xe9"),
    "latin1_header.csv": lambda: csv_text(f"a,{URL}/1.jpg,x", header="reference_id,image_url,cam\xe9ra").replace(
        "é".encode(), b"\xe9"
    ),
    "nul_byte.csv": lambda: csv_text(*good_rows(1), f"a-\x002,{URL}/2.jpg,cam2"),
    "nul_byte.jsonl": lambda: jsonl(img("a")) + b'{"reference_id": "b", "image_url": "x\x00"}\n',
    # the file as a whole
    "empty.csv": lambda: b"",
    "empty.jsonl": lambda: b"",
    "empty.parquet": lambda: b"",
    "bom_only.csv": lambda: b"\xef\xbb\xbf",
    "blank_lines_only.jsonl": lambda: b"\n\n  \n",
    "header_only.csv": lambda: csv_text(),
    "header_only_blank_lines.tsv": lambda: b"reference_id\timage_url\n\n\n",
    "header_only.parquet": lambda: parquet(images_table(0)),
    "duplicate_headers.csv": lambda: csv_text(f"a,{URL}/1.jpg,{URL}/2.jpg", header="reference_id,image_url,image_url"),
    "duplicate_columns.parquet": lambda: parquet(
        pa.Table.from_arrays(
            [pa.array(["a"]), pa.array([f"{URL}/1.jpg"]), pa.array(["x"])],
            names=["reference_id", "image_url", "image_url"],
        )
    ),
    "blank_header_name.csv": lambda: csv_text(f"a,{URL}/1.jpg,x", header="reference_id,image_url,"),
    "empty_key.jsonl": lambda: jsonl({**img("a"), "": "x"}),
    "missing_columns.csv": lambda: csv_text("a,cam1", header="reference_id,camera"),
    "missing_columns.parquet": lambda: parquet({"ref": ["a"], "image_url": [f"{URL}/1.jpg"]}),
    "unknown_extension.xlsx": lambda: csv_text(*good_rows(1)),
    "no_extension": lambda: csv_text(*good_rows(1)),
    "huge_header_name.csv": lambda: csv_text("1,2", header="x" * 1_000_000 + ",y"),
    "many_columns.csv": lambda: csv_text(",".join("v" * 5000), header=",".join(f"c{i}" for i in range(5000))),
    "all_lines_bad.jsonl": lambda: jsonl([img("a")], '{"reference_id": ' + "9" * 5000 + "}"),
    # Parquet that is not (all) Parquet, and Parquet columns of the wrong type
    "truncated.parquet": lambda: (lambda b: b[: len(b) // 2])(parquet(images_table(50))),
    "not_parquet.parquet": lambda: csv_text(*good_rows(2)),
    "footer_only_magic.parquet": lambda: b"PAR1" + b"\x00" * 16 + b"PAR1",
    "corrupt_pages.parquet": corrupt_pages,
    "reference_id_float.parquet": lambda: parquet(
        {"reference_id": pa.array([1.0, 2.5], pa.float64()), "image_url": [f"{URL}/1.jpg", f"{URL}/2.jpg"]}
    ),
    "reference_id_list.parquet": lambda: parquet({"reference_id": pa.array([["a"]]), "image_url": [f"{URL}/1.jpg"]}),
    "image_url_int64.parquet": lambda: parquet({"reference_id": ["a", "b"], "image_url": pa.array([1, 2], pa.int64())}),
    "image_url_timestamp.parquet": lambda: parquet(
        {"reference_id": ["a"], "image_url": pa.array([1], pa.timestamp("s"))}
    ),
    "data_int64.parquet": lambda: parquet({"reference_id": ["r"], "data": pa.array([7], pa.int64())}),
    "data_binary.parquet": lambda: parquet({"reference_id": ["a"], "data": pa.array([b'{"k":1}'])}),
    # rows: structure, with line numbers that must survive line-end and quoting oddities
    "ragged_long.csv": lambda: csv_text(*good_rows(2), f"a-9,{URL}/9.jpg,cam0,EXTRA", *good_rows(1, 10)),
    "ragged_short.tsv": lambda: f"reference_id\timage_url\tcamera\nt-1\t{URL}/1.jpg\tc\nt-2\t{URL}/2.jpg\n".encode(),
    "unterminated_quote.csv": lambda: csv_text(*good_rows(2), f'a-9,"{URL}/9.jpg,cam0', *good_rows(2, 10)),
    "quoted_newline_then_bad.csv": lambda: csv_text(
        f'q-1,{URL}/1.jpg,"two\nlines"', f'q-2,{URL}/2.jpg,"three\r\nline\nnote"', "q-3,ftp://x/3.jpg,cam0"
    ),
    "crlf_then_bad.csv": lambda: csv_text(*good_rows(2), "c-9,not a url,cam0", eol="\r\n"),
    "lone_cr_then_bad.csv": lambda: csv_text(
        *good_rows(3), f"c-9,{URL}/9.jpg,cam0", ",,", f"c-9,{URL}/8.jpg,x", eol="\r"
    ),
    "jsonl_bad_line.jsonl": lambda: jsonl(img("a"), img("b", 2), '{"reference_id": "c", "image_url": ', img("d", 4)),
    "jsonl_array_line.jsonl": lambda: jsonl(img("a"), ["b", f"{URL}/2.jpg"]),
    "many_bad_rows.csv": lambda: csv_text(*(f"m-{i},not-a-url,x" for i in range(5000))),
    # rows: values
    "huge_reference_id.csv": lambda: csv_text(f"{'r' * MB10},{URL}/1.jpg,cam0"),
    "empty_reference_id.csv": lambda: csv_text(*good_rows(1), f" ,{URL}/2.jpg,cam0"),
    "control_char_reference_id.jsonl": lambda: jsonl(img("a"), img("b\u0007", 2)),
    "duplicate_reference_id.csv": lambda: csv_text(*good_rows(3), f"a-2,{URL}/x.jpg,cam0"),
    "duplicate_reference_id.parquet": lambda: parquet(
        {"reference_id": ["p-0", "p-1", "p-0"], "image_url": [f"{URL}/{i}.jpg" for i in range(3)]}
    ),
    "reference_id_null.parquet": lambda: parquet(
        {"reference_id": pa.array(["a", None], pa.string()), "image_url": [f"{URL}/1.jpg", f"{URL}/2.jpg"]}
    ),
    "reference_id_float.jsonl": lambda: jsonl(img("a"), img(1.5, 2)),
    "reference_id_bool_object.jsonl": lambda: jsonl(img(True), img({"id": 1}, 2)),
    "huge_integer.jsonl": lambda: jsonl(img("a"), '{"reference_id": ' + "9" * 5000 + ', "image_url": "' + URL + '"}'),
    "priority_weight_out_of_range.csv": lambda: csv_text(
        f"a,{URL}/1.jpg,11", header="reference_id,image_url,priority_weight"
    ),
    # JSON columns: not objects, not JSON, not sendable as JSON, or nested beyond the stack
    "data_array.csv": lambda: csv_text('r-1,"{""k"": 1}"', 'r-2,"[1, 2]"', header=RAW_HEADER),
    "data_array.jsonl": lambda: jsonl({"reference_id": "r-1", "data": {"k": 1}}, {"reference_id": "r-2", "data": [1]}),
    "data_invalid_json.csv": lambda: csv_text('r-1,"{""k"": 1}"', 'r-2,"{""k"": }"', header=RAW_HEADER),
    "data_nan.jsonl": lambda: jsonl(
        {"reference_id": "r-1", "data": {"k": 1}}, '{"reference_id": "r-2", "data": {"k": NaN}}'
    ),
    "data_infinity.jsonl": lambda: jsonl(
        {"reference_id": "r-1", "data": {"k": 1}}, '{"reference_id": "r-2", "data": {"k": 1e400}}'
    ),
    "data_infinity.csv": lambda: csv_text('r-1,"{""k"": 1}"', 'r-2,"{""k"": -1e999}"', header=RAW_HEADER),
    "data_nan_struct.parquet": lambda: parquet(
        {"reference_id": ["r-0", "r-1"], "data": pa.array([{"x": 1.0}, {"x": float("nan")}])}
    ),
    "frames_infinity.parquet": lambda: parquet(
        {"reference_id": ["v-0"], "frames": pa.array([[{"frame_id": "f1", "src": f"{URL}/1.jpg", "w": float("inf")}]])}
    ),
    "data_timestamp_struct.parquet": lambda: parquet(
        {"reference_id": ["t-0"], "data": pa.array([{"image_url": f"{URL}/1.jpg", "taken": dt.datetime(2024, 5, 1)}])}
    ),
    "metadata_infinity.csv": lambda: csv_text(
        f'm-1,{URL}/1.jpg,"{{""w"": 1e999}}"', header="reference_id,image_url,metadata"
    ),
    "metadata_array.tsv": lambda: f"reference_id\timage_url\tmetadata\nm-1\t{URL}/1.jpg\t[1]\n".encode(),
    "frames_invalid_json.csv": lambda: csv_text(
        'v-1,"[{""frame_id"": ""f1"", ""src"": ""' + URL + '/1.jpg""}"', header="reference_id,frames"
    ),
    "deep_nesting.jsonl": lambda: jsonl(
        img("a"), '{"reference_id": "b", "data": ' + "[" * 100_000 + "]" * 100_000 + "}"
    ),
    "deep_nesting_data.csv": lambda: csv_text(f'r-1,"{nested(5000)}"', header=RAW_HEADER),
    # URLs GT Studio cannot (or must not) fetch
    "s3_url.csv": lambda: csv_text(*good_rows(1), "s-2,s3://bucket/key.jpg,cam0"),
    "gs_url.jsonl": lambda: jsonl(img("a"), {"reference_id": "g-2", "image_url": "gs://bucket/key.jpg"}),
    "javascript_url.csv": lambda: csv_text(*good_rows(1), "j-2,javascript:alert(1),cam0"),
    "file_url.parquet": lambda: parquet(
        {"reference_id": ["f-0", "f-1"], "image_url": [f"{URL}/0.jpg", "file:///etc/passwd"]}
    ),
    "file_url_in_data.csv": lambda: csv_text('d-1,"{""image_url"": ""file:///etc/passwd""}"', header=RAW_HEADER),
    "url_with_space.csv": lambda: csv_text(f"u-1,{URL}/my photo.jpg,cam0"),
}

# --- edge: odd, but valid; every one of these must load ---------------------------------------------------

EDGE_FILES: dict[str, Callable[[], bytes]] = {
    "utf8_bom.csv": lambda: b"\xef\xbb\xbf" + csv_text(*good_rows(3)),
    "utf8_bom.jsonl": lambda: b"\xef\xbb\xbf" + jsonl(img("a"), img("b", 2)),
    "crlf.csv": lambda: csv_text(*good_rows(3), eol="\r\n"),
    "lone_cr.csv": lambda: csv_text(*good_rows(3), eol="\r"),
    "crlf_lone_cr.jsonl": lambda: jsonl(img("a")).replace(b"\n", b"\r\n") + jsonl(img("b", 2)).replace(b"\n", b"\r"),
    "quoted_newlines.csv": lambda: csv_text(
        f'q-1,{URL}/1.jpg,"two\nlines"', f'q-2,{URL}/2.jpg,"a\r\nb\rc"', f"q-3,{URL}/3.jpg,cam0"
    ),
    "empty_lines.csv": lambda: csv_text("", *good_rows(2), "", "", *good_rows(1, 5), ""),
    "empty_lines.jsonl": lambda: b"\n" + jsonl(img("a")) + b"\n   \n" + jsonl(img("b", 2)),
    "all_empty_row.csv": lambda: csv_text(*good_rows(1), ",,", *good_rows(1, 2)),
    "formula_reference_id.csv": lambda: csv_text(
        f'"=HYPERLINK(""http://evil.example/"",""click"")",{URL}/1.jpg,=1+2',
        f"+cmd,{URL}/2.jpg,@SUM(A1)",
        f"-3,{URL}/3.jpg,cam0",
    ),
    "verbatim_values.tsv": lambda: csv_text(
        *(f"{ref}\t{URL}/{i}.jpg" for i, ref in enumerate(["001", "NaN", "null", "1e5"])),
        header="reference_id\timage_url",
    ),
    "unicode.jsonl": lambda: jsonl(img("日本語-ü-😀"), img("Ελληνικά", 2)),
    "http_urls.csv": lambda: csv_text("h-1,http://cdn.example.com/1.jpg,x", "h-2,HTTPS://CDN.example.com/2.jpg,y"),
    "integer_ids.parquet": lambda: parquet(
        {"reference_id": pa.array([1, 2], pa.int64()), "image_url": [f"{URL}/1.jpg", f"{URL}/2.jpg"]}
    ),
    "extra_column_types.parquet": lambda: parquet(
        {
            "reference_id": ["e-0", "e-1"],
            "image_url": [f"{URL}/0.jpg", f"{URL}/1.jpg"],
            "taken": pa.array([0, 86_400], pa.timestamp("s")),
            "score": [0.5, float("nan")],
            "tags": pa.array([{"k": float("inf")}, None]),
            "info": pa.array([{"at": dt.datetime(2024, 5, 1), "raw": b"\x00\x01"}, None]),
        }
    ),
    "deep_but_fine.jsonl": lambda: jsonl(
        img("a"), '{"reference_id": "b", "data": {"k": ' + "[" * 200 + "]" * 200 + "}}"
    ),
    "huge_data_cell.csv": lambda: csv_text('big-1,"{""blob"": ""' + "d" * MB10 + '""}"', header=RAW_HEADER),
}


def main() -> None:
    for folder, files in ((BAD, BAD_FILES), (EDGE, EDGE_FILES)):
        folder.mkdir(exist_ok=True)
        for stale in folder.iterdir():
            if stale.name not in files:
                stale.unlink()
        for name, make in files.items():
            data = make()
            path = folder / name
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)


if __name__ == "__main__":
    main()
