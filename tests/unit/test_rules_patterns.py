"""edge_sync/rules/patterns.py: ThingsBoard's TbNodeUtils.processPattern (its cases from
TbNodeUtilsTest, and Jackson's JsonNode.asText for the values a data path ends at)."""

from __future__ import annotations

from typing import Any

import pytest

from edge_sync.rules.patterns import has_pattern, java_double, process_pattern


@pytest.mark.parametrize(("pattern", "data", "metadata", "expected"), [
    # TbNodeUtilsTest.testSimpleReplacement / testNoReplacement / testSameKeysReplacement
    ("ABC ${metadata_key} $[data_key]", {"data_key": "data_value"},
     {"metadata_key": "metadata_value"}, "ABC metadata_value data_value"),
    ("ABC ${metadata_key} $[data_key]", {"key": "data_value"}, {"key": "metadata_value"},
     "ABC ${metadata_key} $[data_key]"),
    ("ABC ${key} $[key]", {"key": "data_value"}, {"key": "metadata_value"},
     "ABC metadata_value data_value"),
    # testComplexObjectReplacement / testArrayReplacementDoesNotWork
    ("ABC ${key} $[key1.key2.key3]", {"key1": {"key2": {"key3": "value3"}}},
     {"key": "metadata_value"}, "ABC metadata_value value3"),
    ("ABC ${key} $[key1.key2[0].key3]", {"key1": {"key2": {"key3": "value3"}}},
     {"key": "metadata_value"}, "ABC metadata_value $[key1.key2[0].key3]"),
    # testAllMetadataTemplateReplacement / testAllDataTemplateReplacement, and both twice
    ("META ${*}", {}, {"meta_key": "meta_value"}, 'META {"meta_key":"meta_value"}'),
    ("${*} then again ${*}", {}, {"meta_key": "meta_value"},
     '{"meta_key":"meta_value"} then again {"meta_key":"meta_value"}'),
    ("META ${*}", {}, {}, "META {}"),
    ("DATA $[*]", {"data_key": "data_value"}, {}, 'DATA {"data_key":"data_value"}'),
    ("$[*] then again $[*]", {"data_key": "data_value"}, {},
     '{"data_key":"data_value"} then again {"data_key":"data_value"}'),
])
def test_thingsboards_own_cases(pattern: str, data: Any, metadata: dict[str, str],
                                expected: str) -> None:
    assert process_pattern(pattern, data, metadata) == expected


@pytest.mark.parametrize(("value", "text"), [
    (True, "true"), (False, "false"), (None, "null"), (42, "42"), (-7, "-7"),
    (20.5, "20.5"), (20.0, "20.0"), (0.001, "0.001"), (1e7, "1.0E7"), (1.5e-4, "1.5E-4"),
    (123456.789, "123456.789"), (2**70, "1180591620717411303424"), ("open", "open"),
])
def test_a_value_is_substituted_as_jacksons_as_text(value: Any, text: str) -> None:
    assert process_pattern("v=$[a.b]", {"a": {"b": value}}, {}) == f"v={text}"


@pytest.mark.parametrize("pattern", [
    "$[a]",  # an object: not a value
    "$[list]",  # a list: not a value
    "$[list.0]",  # no walking into lists
    "$[a.b.c]",  # through a value
    "$[a..b]", "$[.a]", "$[]", "$[.]", "$[missing]",
])
def test_a_path_not_ending_at_a_value_is_left_as_written(pattern: str) -> None:
    assert process_pattern(pattern, {"a": {"b": 1}, "list": [1]}, {}) == pattern


def test_a_trailing_dot_is_dropped_as_javas_split_does() -> None:
    assert process_pattern("$[a.b.]", {"a": {"b": 1}}, {}) == "1"


def test_data_paths_need_object_data_but_the_whole_data_does_not() -> None:
    assert process_pattern("$[0] $[*]", [1, True], {}) == "$[0] [1,true]"
    assert process_pattern("$[a] $[*]", "text", {}) == '$[a] "text"'


def test_metadata_is_substituted_first_and_the_data_after() -> None:
    """processPattern(pattern, metadata) runs before the data loop: a metadata value naming a
    data key is substituted in turn."""
    assert process_pattern("${k}", {"x": "from data"}, {"k": "$[x]"}) == "from data"


def test_a_pattern_without_dollar_is_returned_as_it_is() -> None:
    text = "High Temperature"
    assert process_pattern(text, {"a": 1}, {"a": "b"}) is text


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0.0"), (-0.0, "-0.0"), (1.0, "1.0"), (9999999.0, "9999999.0"),
    (10000000.0, "1.0E7"), (0.00099, "9.9E-4"), (-1e20, "-1.0E20"), (1.25e-10, "1.25E-10"),
    (float("inf"), "Infinity"), (float("nan"), "NaN"),
])
def test_java_double_to_string(value: float, text: str) -> None:
    assert java_double(value) == text



_EVERY_KEY = {key: "X" for key in ("", "*", "sev", "sev}", "a", "{a", "level", "]", "}", "$")}
"""Metadata naming every key the texts below could name."""
_EVERY_PATH = {"level": "X", "a": {"b": "X"}, "": "X", "sev": "X", "*": "X"}


@pytest.mark.parametrize("text", [
    "MAJOR", "", "$sev", "${sev", "$[level", "}${", "][$[", "$ {sev}", "$(sev)", "{sev}",
    "[level]", "MAJOR$"])
def test_a_text_without_a_pattern_is_the_same_for_every_message(text: str) -> None:
    """has_pattern False: process_pattern gives the text back, whatever the message holds."""
    assert not has_pattern(text)
    assert process_pattern(text, _EVERY_PATH, _EVERY_KEY) == text


@pytest.mark.parametrize("text", [
    "${sev}", "${}", "${*}", "$[level]", "$[*]", "$[a.b]", "MA${a}JOR", "${sev}}", "x $[a.b] y"])
def test_a_text_with_a_pattern_is_one_a_message_can_change(text: str) -> None:
    assert has_pattern(text)
    assert process_pattern(text, _EVERY_PATH, _EVERY_KEY) != text
