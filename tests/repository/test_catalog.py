"""The catalog parser: strict, and every error names the entry and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from sutazai.errors import CatalogError
from sutazai.repository.catalog import SCHEMES, load_catalog, parse_catalog

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "catalog.yaml"


def valid(**overrides: Any) -> dict[str, Any]:
    base = {"name": "tiny", "source": "https://mirror.example/tiny.gguf", "format": "gguf",
            "tasks": ["text-generation"], "license": "mit"}
    return {**base, **overrides}


def test_shipped_catalog_is_valid_and_pins_every_pypi_entry() -> None:
    catalog = load_catalog(SHIPPED)
    assert [e.name for e in catalog.models] == ["gemma3-270m", "smollm2-135m-instruct",
                                                "all-minilm-l6-v2", "en-core-web-sm"]
    assert all(e.scheme == "pypi" and e.revision for e in catalog.models)
    assert {t for e in catalog.models for t in e.tasks} == {"text-generation", "chat",
                                                            "embeddings", "ner"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"source": "ftp://x/y"}, "entry 2 (tiny): field 'source': unknown scheme 'ftp'"),
        ({"name": "Bad Name"}, "entry 2 (Bad Name): field 'name'"),
        ({"tasks": ["dancing"]}, "entry 2 (tiny): field 'tasks.0'"),
        ({"format": "zip"}, "entry 2 (tiny): field 'format'"),
        ({"sha256": "1234"}, "entry 2 (tiny): field 'sha256': must be 64 hexadecimal"),
        ({"source": "pypi:some-weights"}, "entry 2 (tiny): field 'revision': a pypi: source"),
        ({"licence": "mit"}, "entry 2 (tiny): field 'licence': unknown field"),
        ({"tasks": []}, "entry 2 (tiny): field 'tasks'"),
        ({"source": "hf:"}, "entry 2 (tiny): field 'source': names no package"),
    ],
)
def test_invalid_entries_name_the_entry_and_the_field(change: dict[str, Any], expected: str
                                                      ) -> None:
    with pytest.raises(CatalogError) as error:
        parse_catalog({"models": [valid(name="first"), valid(**change)]})
    assert expected in str(error.value)


def test_missing_license_and_duplicate_names() -> None:
    broken = valid()
    del broken["license"]
    with pytest.raises(CatalogError, match=r"entry 1 \(tiny\): field 'license': Field required"):
        parse_catalog({"models": [broken]})
    with pytest.raises(CatalogError, match=r"entry 2 \(tiny\): field 'name'.*unique"):
        parse_catalog({"models": [valid(), valid()]})


def test_file_level_problems(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("models: [unclosed")
    with pytest.raises(CatalogError, match="not valid YAML"):
        load_catalog(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(CatalogError, match="'models' list"):
        load_catalog(tmp_path / "list.yaml")


DIGITS = "1234567890" * 6 + "1234"  # a sha256 can be all digits: YAML reads a number


def catalog_file(tmp_path: Path, **fields: str) -> Path:
    """A one-entry catalog with ``fields`` written into the YAML exactly as given."""
    lines = {"name": "gemma", "source": "pypi:gemma-weights", "revision": "'1.0'",
             "format": "gguf", "tasks": "[chat]", "license": "mit", **fields}
    path = tmp_path / "catalog.yaml"
    body = "".join(f"    {key}: {value}\n" for key, value in lines.items())
    path.write_text("models:\n  - " + body[4:])
    return path


@pytest.mark.parametrize(("field", "written", "expected"), [
    ("sha256", DIGITS, f'entry 1 (gemma): field \'sha256\' was read as a number; quote it in '
                       f'the catalog: sha256: "{DIGITS}"'),
    ("sha256", "0" + "1234567" * 9, 'sha256: "0' + "1234567" * 9 + '"'),  # octal: as written
    ("revision", "1.10", "field 'revision' was read as a number; quote it in the catalog: "
                         'revision: "1.10"'),
    ("revision", "20240131", 'revision: "20240131"'),
    ("revision", "2024-01-31", "field 'revision' was read as a date; quote it in the "
                               'catalog: revision: "2024-01-31"'),
    ("description", "yes", "field 'description' was read as true or false"),
    ("include", "[7]", "field 'include.0' was read as a number; quote it in the catalog: \"7\""),
])
def test_unquoted_numbers_say_to_quote_them(tmp_path: Path, field: str, written: str,
                                            expected: str) -> None:
    with pytest.raises(CatalogError) as error:
        load_catalog(catalog_file(tmp_path, **{field: written}))
    assert expected in str(error.value)


def test_quoted_as_the_hint_says_a_catalog_loads(tmp_path: Path) -> None:
    entry = load_catalog(catalog_file(tmp_path, sha256=f'"{DIGITS}"', revision='"1.10"')
                         ).models[0]
    assert (entry.sha256, entry.revision) == (DIGITS, "1.10")


NAMES = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)
ENTRIES = st.fixed_dictionaries(
    {
        "name": NAMES,
        "source": st.sampled_from(["https://m/x.gguf", "file:/models/x", "hf:org/repo",
                                   "oci://reg:5000/lib/x:1", "ollama:gemma3:270m", "pypi:pkg"]),
        "format": st.sampled_from(["gguf", "safetensors", "spacy", "onnx", "other"]),
        "tasks": st.lists(st.sampled_from(["text-generation", "chat", "embeddings", "ner"]),
                          min_size=1, max_size=4, unique=True),
        "license": st.text(min_size=1, max_size=10),
        "revision": st.text(alphabet="0123456789abcdef.", min_size=1, max_size=12),
    },
    optional={"sha256": st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
              "include": st.lists(st.text(max_size=8), max_size=3),
              "allow_pickle": st.booleans()},
)


@hyp_settings(max_examples=150, deadline=None)
@given(st.lists(ENTRIES, max_size=5, unique_by=lambda e: e["name"]))
def test_valid_catalogs_round_trip_through_yaml(entries: list[dict[str, Any]]) -> None:
    catalog = parse_catalog(yaml.safe_load(yaml.safe_dump({"models": entries})))
    assert [e.name for e in catalog.models] == [e["name"] for e in entries]
    for parsed, raw in zip(catalog.models, entries, strict=True):
        assert parsed.scheme in SCHEMES and parsed.source == raw["source"]
        assert parsed.model_dump(exclude_unset=True) == raw


JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=12,
)


@hyp_settings(max_examples=300, deadline=None)
@given(base=ENTRIES, key=st.sampled_from(["name", "source", "format", "tasks", "license",
                                          "sha256", "revision", "include", "extra"]),
       value=JUNK)
def test_any_corruption_is_accepted_or_a_catalog_error_naming_the_entry(
    base: dict[str, Any], key: str, value: Any
) -> None:
    corrupted = {**base, key: value}
    try:
        parse_catalog({"models": [corrupted]})
    except CatalogError as exc:
        assert "entry 1" in str(exc)
