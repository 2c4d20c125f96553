"""cloud/tb_import: ThingsBoard export files (hand-written in ThingsBoard's export shapes, in
tests/fixtures/thingsboard/) become import plans; bad files are refused with the reason."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from edge_sync.cloud import tb_import
from edge_sync.common import ids
from edge_sync.common.entity_graph import NULL_ID, RULE_CHAIN_INPUT_NODE, Ref
from edge_sync.errors import BadRequest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"
NOW_MS = 1_764_921_600_000


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


class Cloud:
    """A Lookup over a few known refs and named entities."""

    def __init__(self, refs: set[Ref] | None = None,
                 named: dict[tuple[str, str], uuid.UUID] | None = None) -> None:
        self.refs = refs or set()
        self.named = named or {}

    def has(self, ref: Ref) -> bool:
        return ref in self.refs or any(ref == Ref(kind, str(value))
                                       for (kind, _), value in self.named.items())

    def find(self, entity_type: str, name: str) -> uuid.UUID | None:
        return self.named.get((entity_type, name))


def id_source() -> Any:
    gen = ids.TimeBasedIds(clock_seq_and_node=0x8000_0000_0000_0001 | (1 << 40))
    return lambda: gen.new(NOW_MS)


def plan(doc: Any, **kw: Any) -> tb_import.ImportPlan:
    kw.setdefault("new_id", id_source())
    return tb_import.plan(doc, **kw)


def typed(kind: str, value: uuid.UUID) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


# -- a dashboard and a rule chain import as they are ---------------------------------------------


def test_a_dashboard_export_imports_as_is_with_a_new_id():
    doc = fixture("boiler_room_dashboard.json")
    out = plan(doc, source="boiler_room_dashboard.json")
    assert [(i.entity_type, i.name) for i in out.items] == [("DASHBOARD", "Boiler room")]
    body = out.items[0].body
    new_id = out.items[0].id
    assert new_id.version == 1 and body["id"] == typed("DASHBOARD", new_id)
    assert body["createdTime"] == ids.unix_ms(new_id) == NOW_MS
    # everything else exactly as exported, but the empty resources list
    expected = {k: v for k, v in doc.items() if k != "resources"}
    assert {k: v for k, v in body.items() if k not in ("id", "createdTime")} == expected
    assert out.notes == ()
    assert out.as_json() == {"entities": [{"entity_type": "DASHBOARD", "id": str(new_id),
                                           "name": "Boiler room"}], "notes": []}


def test_a_rule_chain_export_imports_as_is_nodes_get_ids_and_the_chain_its_first_node():
    doc = fixture("boiler_alarms_rule_chain.json")
    out = plan(doc)
    assert [(i.entity_type, i.name) for i in out.items] == [
        ("RULE_CHAIN", "Boiler alarms"), ("RULE_CHAIN_METADATA", "Boiler alarms")]
    chain, meta = out.items[0].body, out.items[1].body
    chain_id = out.items[0].id
    assert out.items[1].id == chain_id
    assert meta["ruleChainId"] == typed("RULE_CHAIN", chain_id)
    assert {k: v for k, v in chain.items() if k not in ("id", "createdTime", "firstRuleNodeId")} \
        == {k: v for k, v in doc["ruleChain"].items() if k != "firstRuleNodeId"}
    assert chain["type"] == "EDGE" and chain["root"] is False
    nodes = meta["nodes"]
    assert chain["firstRuleNodeId"] == nodes[0]["id"]
    assert [n["name"] for n in nodes] == [n["name"] for n in doc["metadata"]["nodes"]]
    node_ids = [uuid.UUID(n["id"]["id"]) for n in nodes]
    assert len(set(node_ids)) == 4 and all(n != chain_id for n in node_ids)
    for mine, theirs in zip(nodes, doc["metadata"]["nodes"], strict=True):
        assert mine["ruleChainId"] == typed("RULE_CHAIN", chain_id)
        assert mine["id"]["entityType"] == "RULE_NODE"
        assert mine["configuration"] == theirs["configuration"]
        assert mine["configurationVersion"] == theirs["configurationVersion"]
        assert mine["additionalInfo"] == theirs["additionalInfo"]
        assert mine["type"] == theirs["type"] and "debugMode" not in mine
    # the old debugMode flag became debugSettings, as ThingsBoard's import does
    assert nodes[2]["debugSettings"] == {"failuresEnabled": True, "allEnabled": True}
    assert nodes[1]["debugSettings"] == doc["metadata"]["nodes"][1]["debugSettings"]
    assert meta["connections"] == doc["metadata"]["connections"]
    assert meta["firstNodeIndex"] == 0 and meta["ruleChainConnections"] is None
    assert out.notes == ()


def test_the_file_itself_is_never_changed_and_two_imports_make_different_ids():
    doc = fixture("boiler_alarms_rule_chain.json")
    before = copy.deepcopy(doc)
    first, second = plan(doc), plan(doc, new_id=lambda: ids.time_based())
    assert doc == before
    assert {i.id for i in first.items}.isdisjoint({i.id for i in second.items})


def test_keep_ids_keeps_the_ids_a_rest_shaped_file_carries():
    dash = fixture("boiler_room_dashboard.json")
    own = uuid.UUID("65cf0240-d1b0-11f0-9234-010000abcdef")
    dash.update(id=typed("DASHBOARD", own), createdTime=1, tenantId=typed("TENANT", own))
    out = plan(dash, keep_ids=True)
    assert out.items[0].id == own and out.items[0].body["createdTime"] == ids.unix_ms(own)
    assert "tenantId" not in out.items[0].body
    assert plan(dash).items[0].id != own  # replaced by default
    dash["id"] = typed("ASSET", own)
    with pytest.raises(BadRequest, match=r"id: expected a DASHBOARD id"):
        plan(dash, keep_ids=True, entity_type="DASHBOARD")


# -- the other kinds ----------------------------------------------------------------------------


def test_a_device_profile_is_not_the_default_and_loses_a_rule_chain_the_cloud_lacks():
    doc = fixture("thermostat_device_profile.json")
    out = plan(doc, source="p.json")
    body = out.items[0].body
    assert out.items[0].entity_type == "DEVICE_PROFILE" and body["name"] == "thermostat"
    assert body["profileData"] == doc["profileData"] and body["default"] is False
    assert body["defaultRuleChainId"] is None
    assert out.notes == ("p.json: defaultRuleChainId 7a3c1e50-4b5a-11f0-9234-010000abcdef "
                         "cleared: the cloud has no such RULE_CHAIN",)
    kept = Cloud({Ref("RULE_CHAIN", "7a3c1e50-4b5a-11f0-9234-010000abcdef")})
    assert plan(doc, lookup=kept).items[0].body["defaultRuleChainId"] == doc["defaultRuleChainId"]
    doc["default"] = True
    assert any("default set to false" in n for n in plan(doc).notes)


def test_a_device_profile_without_its_transport_is_refused_naming_what_is_missing():
    doc = fixture("thermostat_device_profile.json")
    del doc["transportType"], doc["profileData"]
    with pytest.raises(BadRequest, match=r"^p.json: missing transportType, profileData \("):
        plan(doc, source="p.json", entity_type="DEVICE_PROFILE")


def test_an_asset_takes_the_clouds_profile_of_its_type_else_the_default_or_is_refused():
    doc = fixture("boiler_house_asset.json")
    with pytest.raises(BadRequest, match=r"the cloud has no asset profile named 'building' \(its "
                                         r"type\) nor a default one"):
        plan(doc)
    profile = uuid.UUID("11111111-4b5b-11f0-9234-010000abcdef")
    out = plan(doc, lookup=Cloud(named={("ASSET_PROFILE", "building"): profile}))
    body = out.items[0].body
    assert body["assetProfileId"] == typed("ASSET_PROFILE", profile)
    assert body["customerId"] == typed("CUSTOMER", NULL_ID) and body["label"] == doc["label"]
    assert out.notes == (f"the file: assetProfileId 2d8a1c90-4b5b-11f0-9234-010000abcdef: the "
                         f"cloud's asset profile 'building' ({profile}) taken",)
    default = uuid.UUID("66666666-4b5b-11f0-9234-010000abcdef")
    out = plan(doc, lookup=Cloud(named={("ASSET_PROFILE", "default"): default}))
    assert out.items[0].body["assetProfileId"] == typed("ASSET_PROFILE", default)
    assert out.notes == (f"the file: assetProfileId 2d8a1c90-4b5b-11f0-9234-010000abcdef: the "
                         f"cloud's asset profile 'default' ({default}) taken, it has none named "
                         "'building'",)


def test_an_asset_and_its_profile_in_one_file_import_together_profile_first():
    docs = [fixture("boiler_house_asset.json"), fixture("building_asset_profile.json")]
    out = plan(docs, source="site.json")
    assert [i.entity_type for i in out.items] == ["ASSET_PROFILE", "ASSET"]
    assert out.items[1].body["assetProfileId"] == typed("ASSET_PROFILE", out.items[0].id)
    assert "site.json[1]: defaultDashboardId 0e4b1d70-4b5b-11f0-9234-010000abcdef cleared: the " \
           "cloud has no such DASHBOARD" in out.notes


def test_a_customer_and_a_user_whose_password_is_dropped():
    out = plan(fixture("acme_customer.json"))
    assert out.items[0].entity_type == "CUSTOMER" and out.items[0].name == "ACME Heating"
    user_doc = fixture("operator_user.json")
    user_doc["additionalInfo"]["userPasswordHistory"] = {"1": "$2a$10$hash"}
    out = plan(user_doc, source="u.json")
    body = out.items[0].body
    assert out.items[0].entity_type == "USER" and out.items[0].name == "operator@plant.example"
    assert "password" not in body and "do-not-store-me" not in json.dumps(body)
    assert "$2a$10$hash" not in json.dumps(body)
    assert body["additionalInfo"] == {"description": user_doc["additionalInfo"]["description"],
                                      "defaultDashboardFullscreen": False}
    assert body["customerId"] == typed("CUSTOMER", NULL_ID)
    assert out.notes == ("u.json: password, additionalInfo.userPasswordHistory not imported: "
                         "credentials are never stored (set the user's password on the edge)",)
    assert "do-not-store-me" not in " ".join(out.notes)


def test_a_user_needs_a_known_authority_and_a_customer_user_its_customer():
    doc = fixture("operator_user.json")
    doc["authority"] = "SYS_ADMIN"
    with pytest.raises(BadRequest, match=r"authority: expected one of TENANT_ADMIN, CUSTOMER_USER, "
                                         r"got 'SYS_ADMIN'"):
        plan(doc)
    doc["authority"] = "CUSTOMER_USER"
    with pytest.raises(BadRequest, match="a CUSTOMER_USER needs its customer"):
        plan(doc)
    customer = uuid.UUID("22222222-4b5b-11f0-9234-010000abcdef")
    doc["customerId"] = typed("CUSTOMER", customer)
    out = plan(doc, lookup=Cloud({Ref("CUSTOMER", str(customer))}))
    assert out.items[0].body["customerId"] == typed("CUSTOMER", customer)


def test_a_widgets_bundle_brings_its_widget_types_and_a_dashboard_may_use_them():
    bundle = fixture("plant_widgets_bundle.json")
    dash = fixture("valve_dashboard.json")
    with pytest.raises(BadRequest, match=r"needs the widget type 'plant_widgets.valve_state' "
                                         r"\(typeFullFqn \"tenant.plant_widgets.valve_state\"\)"):
        plan(dash)
    out = plan([dash, bundle])
    assert [i.entity_type for i in out.items] == ["WIDGET_TYPE", "WIDGETS_BUNDLE", "DASHBOARD"]
    wt, wb = out.items[0], out.items[1]
    assert wt.body["fqn"] == "plant_widgets.valve_state"
    assert wt.body["descriptor"] == bundle["widgetTypes"][0]["descriptor"]
    assert wb.body["alias"] == "plant_widgets" and wb.name == "Plant widgets"
    assert out.bundle_fqns == {wb.id: ("plant_widgets.valve_state",)}
    # the cloud already having the widget type is as good
    known = Cloud({Ref("WIDGET_TYPE_FQN", "plant_widgets.valve_state")})
    assert [i.entity_type for i in plan(dash, lookup=known).items] == ["DASHBOARD"]


def test_a_widget_type_without_fqn_gets_one_as_thingsboard_makes_it():
    bundle = fixture("plant_widgets_bundle.json")
    del bundle["widgetTypes"][0]["fqn"]
    out = plan(bundle)
    assert out.items[0].body["fqn"] == "plant_widgets.valve_state"
    alone = plan({"name": "Big Gauge!", "descriptor": {"type": "latest"}})
    assert alone.items[0].entity_type == "WIDGET_TYPE" and alone.items[0].body["fqn"] == "big_gauge_"


def test_legacy_dashboard_widgets_get_their_type_fqn():
    out = plan(fixture("legacy_dashboard.json"))
    widget = next(iter(out.items[0].body["configuration"]["widgets"].values()))
    assert widget["typeFullFqn"] == "system.digital_gauges.digital_thermometer"
    assert not {"isSystemType", "bundleAlias", "typeAlias"} & set(widget)
    assert out.notes == ("the file: 1 legacy widget(s) given their typeFullFqn (isSystemType/"
                         "bundleAlias/typeAlias), as ThingsBoard's import does",)


def test_legacy_rule_chain_connections_become_input_nodes_whose_target_must_exist():
    doc = fixture("boiler_alarms_rule_chain.json")
    target = uuid.UUID("33333333-4b5b-11f0-9234-010000abcdef")
    doc["metadata"]["ruleChainConnections"] = [
        {"fromIndex": 1, "targetRuleChainId": typed("RULE_CHAIN", target),
         "additionalInfo": {"layoutX": 900, "layoutY": 300}, "type": "Success"}]
    with pytest.raises(BadRequest, match=f"needs RULE_CHAIN {target}, which neither the cloud "
                                         "nor the file has"):
        plan(doc)
    out = plan(doc, lookup=Cloud({Ref("RULE_CHAIN", str(target))}))
    meta = out.items[1].body
    node = meta["nodes"][4]
    assert node["type"] == RULE_CHAIN_INPUT_NODE and node["configurationVersion"] == 1
    assert node["configuration"] == {"ruleChainId": str(target),
                                     "forwardMsgToDefaultRuleChain": False}
    assert meta["connections"][-1] == {"fromIndex": 1, "toIndex": 4, "type": "Success"}


def test_an_entity_view_names_what_it_shows():
    device = uuid.UUID("44444444-4b5b-11f0-9234-010000abcdef")
    doc = {"name": "boiler temps", "type": "view", "entityId": typed("DEVICE", device),
           "keys": {"timeseries": ["temperature"]}, "startTimeMs": 0, "endTimeMs": 0}
    with pytest.raises(BadRequest, match=f"needs DEVICE {device}"):
        plan(doc)
    out = plan(doc, lookup=Cloud({Ref("DEVICE", str(device))}))
    assert out.items[0].entity_type == "ENTITY_VIEW"


# -- refused, with the reason -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind", "message"), [
    ("bad_rule_chain_no_metadata.json", None,
     r"^bad_rule_chain_no_metadata.json: metadata: missing \(the rule chain's nodes"),
    ("bad_rule_chain_connection.json", None,
     r"^bad_rule_chain_connection.json: metadata.connections\[0\].toIndex: 5 names no node "
     r"\(there are 1\)$"),
    ("bad_dashboard_no_title.json", None,
     r"^bad_dashboard_no_title.json: cannot tell what kind of ThingsBoard export this is "
     r"\(fields: configuration, image, name\): give the type"),
    ("bad_dashboard_no_title.json", "DASHBOARD", r"^bad_dashboard_no_title.json: title: missing$"),
    ("boiler_room_dashboard.json", "DEVICE", r"^type: DEVICE: devices are not imported"),
    ("boiler_room_dashboard.json", "TENANT", r"^type: TENANT: not a kind that can be imported"),
])
def test_bad_files_are_refused_with_the_reason(name, kind, message):
    with pytest.raises(BadRequest, match=message):
        plan(fixture(name), entity_type=kind, source=name)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["metadata"]["nodes"][1].pop("type"),
     r"metadata.nodes\[1\].type: missing"),
    (lambda d: d["metadata"]["nodes"][0].update(configuration=None),
     r"metadata.nodes\[0\].configuration: missing"),
    (lambda d: d["metadata"]["nodes"][0].update(configuration=[1]),
     r"metadata.nodes\[0\].configuration: expected a JSON object, got a list"),
    (lambda d: d["metadata"].update(firstNodeIndex=9),
     r"metadata.firstNodeIndex: 9 names no node \(there are 4\)"),
    (lambda d: d["metadata"]["connections"].append({"fromIndex": 0, "toIndex": 1}),
     r"metadata.connections\[4\].type: missing"),
    (lambda d: d["ruleChain"].update(type="WEIRD"), r"ruleChain.type: expected CORE or EDGE"),
    (lambda d: d["ruleChain"].update(name=""), r"ruleChain: name: expected text of 1 to 255"),
    (lambda d: d.update(metadata=[]), r"metadata: expected a JSON object, got a list"),
])
def test_a_broken_rule_chain_is_refused_naming_the_place(change, message):
    doc = fixture("boiler_alarms_rule_chain.json")
    change(doc)
    with pytest.raises(BadRequest, match=message):
        plan(doc)


def test_detection_and_its_refusals():
    assert tb_import.detect_kind(fixture("boiler_room_dashboard.json")) == "DASHBOARD"
    assert tb_import.detect_kind(fixture("boiler_alarms_rule_chain.json")) == "RULE_CHAIN"
    assert tb_import.detect_kind(fixture("thermostat_device_profile.json")) == "DEVICE_PROFILE"
    assert tb_import.detect_kind(fixture("building_asset_profile.json")) == "ASSET_PROFILE"
    assert tb_import.detect_kind(fixture("boiler_house_asset.json")) == "ASSET"
    assert tb_import.detect_kind(fixture("acme_customer.json")) == "CUSTOMER"
    assert tb_import.detect_kind(fixture("operator_user.json")) == "USER"
    assert tb_import.detect_kind(fixture("plant_widgets_bundle.json")) == "WIDGETS_BUNDLE"
    own = {"id": typed("ASSET", uuid.uuid4()), "name": "x"}
    assert tb_import.detect_kind(own) == "ASSET"
    with pytest.raises(BadRequest, match="DEVICE: devices are not imported"):
        tb_import.detect_kind({"id": typed("DEVICE", uuid.uuid4()), "name": "d"})
    with pytest.raises(BadRequest, match=r"could be any of DASHBOARD, DEVICE_PROFILE \(fields: "
                                         r"configuration, profileData, title\): give the type"):
        tb_import.detect_kind({"title": "t", "configuration": {}, "profileData": {}})


def test_file_decoding_errors_name_the_file():
    assert tb_import.load(b'\xef\xbb\xbf{"a": 1}', "f.json") == {"a": 1}
    for raw, message in [(b"", r"^f.json: empty"), (b"{", r"^f.json: malformed JSON: "),
                         (b"\xff", r"^f.json: not UTF-8")]:
        with pytest.raises(BadRequest, match=message):
            tb_import.load(raw, "f.json")
    with pytest.raises(BadRequest, match=r"^f.json\[1\]: expected a JSON object, got a number"):
        plan([fixture("acme_customer.json"), 3], source="f.json")
    with pytest.raises(BadRequest, match=r"^f.json: an empty list"):
        plan([], source="f.json")
    twice = fixture("acme_customer.json")
    twice["id"] = typed("CUSTOMER", uuid.UUID("55555555-4b5b-11f0-9234-010000abcdef"))
    with pytest.raises(BadRequest, match=r"f.json\[1\]: CUSTOMER 55555555-.* appears twice"):
        plan([twice, twice], keep_ids=True, source="f.json")
