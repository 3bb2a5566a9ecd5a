"""The Twirp livekit.SIP service, driven by livekit-api's own SIP client; and the config-file alternative."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from livekit import api
from livekit.protocol import sip
from sip_harness import SipRig

from agentdispatch.sip import SipConfigError, SipDirectory


@pytest.fixture
async def lkapi(rig: SipRig) -> AsyncIterator[api.LiveKitAPI]:
    client = api.LiveKitAPI(rig.server.url, "devkey", "secret")
    yield client
    await client.aclose()


async def test_trunks_and_rules_round_trip_through_livekit_api(rig: SipRig, lkapi: api.LiveKitAPI) -> None:
    trunk = await lkapi.sip.create_inbound_trunk(
        sip.CreateSIPInboundTrunkRequest(
            trunk=sip.SIPInboundTrunkInfo(
                name="carrier", numbers=["+15550100"], allowed_addresses=["127.0.0.0/8"], metadata="m"
            )
        )
    )
    assert trunk.sip_trunk_id.startswith("ST_") and list(trunk.numbers) == ["+15550100"]
    rule = await lkapi.sip.create_dispatch_rule(
        sip.CreateSIPDispatchRuleRequest(
            dispatch_rule=sip.SIPDispatchRuleInfo(
                rule=sip.SIPDispatchRule(
                    dispatch_rule_individual=sip.SIPDispatchRuleIndividual(room_prefix="c-")
                ),
                trunk_ids=[trunk.sip_trunk_id],
                name="to the agent",
            )
        )
    )
    assert rule.sip_dispatch_rule_id.startswith("SDR_")
    trunks = await lkapi.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())
    assert [t.sip_trunk_id for t in trunks.items] == [trunk.sip_trunk_id]
    rules = await lkapi.sip.list_dispatch_rule(sip.ListSIPDispatchRuleRequest(trunk_ids=[trunk.sip_trunk_id]))
    assert [r.name for r in rules.items] == ["to the agent"]
    # the gateway routes by what was created
    route = rig.gateway.directory.route("127.0.0.1", "+1555", "+15550100")
    assert route is not None and route.room.startswith("c-+1555_")
    assert rig.gateway.directory.route("10.1.2.3", "+1555", "+15550100") is None  # address not allowed

    deleted = await lkapi.sip.delete_dispatch_rule(
        sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=rule.sip_dispatch_rule_id)
    )
    assert deleted.sip_dispatch_rule_id == rule.sip_dispatch_rule_id
    gone = await lkapi.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))
    assert gone.sip_trunk_id == trunk.sip_trunk_id
    assert (await lkapi.sip.list_inbound_trunk(sip.ListSIPInboundTrunkRequest())).items == []
    with pytest.raises(api.TwirpError) as err:
        await lkapi.sip.delete_trunk(sip.DeleteSIPTrunkRequest(sip_trunk_id=trunk.sip_trunk_id))
    assert err.value.code == "not_found"


async def test_sip_methods_need_the_sip_admin_grant_and_leave_other_services_alone(rig: SipRig) -> None:
    url = f"{rig.server.url}/twirp/livekit.SIP/ListSIPInboundTrunk"
    room_admin = api.AccessToken("devkey", "secret").with_grants(api.VideoGrants(room_create=True)).to_jwt()
    sip_admin = api.AccessToken("devkey", "secret").with_sip_grants(api.SIPGrants(admin=True)).to_jwt()
    async with aiohttp.ClientSession() as http:
        async with http.post(url, json={}, headers={"Authorization": f"Bearer {room_admin}"}) as resp:
            assert resp.status == 403 and (await resp.json())["code"] == "permission_denied"
        async with http.post(url, json={}) as resp:
            assert resp.status == 401
        async with http.post(url, json={}, headers={"Authorization": f"Bearer {sip_admin}"}) as resp:
            assert resp.status == 200 and await resp.json() == {}
        rooms = f"{rig.server.url}/twirp/livekit.RoomService/ListRooms"
        lister = api.AccessToken("devkey", "secret").with_grants(api.VideoGrants(room_list=True)).to_jwt()
        async with http.post(rooms, json={}, headers={"Authorization": f"Bearer {lister}"}) as resp:
            assert resp.status == 200  # the server's own Twirp routes still answer


async def test_invalid_rules_are_refused(rig: SipRig) -> None:
    client = api.LiveKitAPI(rig.server.url, "devkey", "secret")
    try:
        with pytest.raises(api.TwirpError) as err:
            await client.sip.create_dispatch_rule(sip.CreateSIPDispatchRuleRequest(name="no rule"))
        assert err.value.code == "invalid_argument"
        with pytest.raises(api.TwirpError):
            await client.sip.create_inbound_trunk(
                sip.CreateSIPInboundTrunkRequest(
                    trunk=sip.SIPInboundTrunkInfo(allowed_addresses=["not-an-ip"])
                )
            )
    finally:
        await client.aclose()


def test_config_file_loads_trunks_and_rules(tmp_path: Path) -> None:
    path = tmp_path / "sip.json"
    path.write_text(
        json.dumps(
            {
                "trunks": [{"sip_trunk_id": "ST_main", "numbers": ["+15550100"], "ringing_timeout": "5s"}],
                "dispatch_rules": [
                    {
                        "rule": {"dispatchRuleDirect": {"roomName": "front-desk"}},
                        "room_config": {"agents": [{"agent_name": "receptionist"}]},
                    }
                ],
            }
        )
    )
    directory = SipDirectory()
    directory.load_file(path)
    route = directory.route("192.0.2.1", "+1555", "+15550100")
    assert route is not None and route.room == "front-desk" and route.room_is_shared
    assert route.trunk.ringing_timeout.seconds == 5
    assert [a.agent_name for a in route.rule.room_config.agents] == ["receptionist"]
    path.write_text('{"dispatch_rules": [{"name": "no rule kind"}]}')
    with pytest.raises(SipConfigError):
        SipDirectory().load_file(path)
