"""sipp UAC scenarios (XML) for the SIP tests and `agentdispatch bench sip`.

Each scenario logs one line per event (`-trace_logs`): `EV <call_id> <event> <sec> <usec> [<extra>]`,
where event is invite / ringing / answered / final / bye_sent / bye_received / cancel_sent, so a run
yields per-call post-dial delays (INVITE → 180, INVITE → 200) and final codes.
"""

from __future__ import annotations

from dataclasses import dataclass

SDP = """v=0
o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio {media_port} RTP/AVP {payloads} 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
a=sendrecv
"""


def stamp(event: str) -> str:
    """A sipp step that logs `EV <call_id> <event> <sec> <usec>`."""
    log = f'<log message="EV [call_id] {event} [$s] [$us]"/>'
    return f'  <nop><action><gettimeofday assign_to="s,us"/>{log}</action></nop>\n'


INVITE = """{stamp}  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port];transport=[transport] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:[caller]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      User-Agent: sipp
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}
    ]]>
  </send>
  <recv response="100" optional="true"/>
"""

AUTH = """  <recv response="407" auth="true"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port];transport=[transport] SIP/2.0
      [last_Via:]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port];transport=[transport] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 INVITE
      Contact: <sip:[caller]@[local_ip]:[local_port];transport=[transport]>
      [authentication username={user} password={password}]
      Max-Forwards: 70
      User-Agent: sipp
      Content-Type: application/sdp
      Content-Length: [len]

{sdp}
    ]]>
  </send>
  <recv response="100" optional="true"/>
"""

RINGING = """  <recv response="180" optional="{optional}">
    <action><gettimeofday assign_to="s,us"/><log message="EV [call_id] ringing [$s] [$us]"/></action>
  </recv>
"""

PROGRESS = """  <recv response="183" optional="true">
    <action><gettimeofday assign_to="s,us"/><log message="EV [call_id] progress [$s] [$us]"/></action>
  </recv>
"""

ANSWERED = """  <recv response="200" rrs="true">
    <action><gettimeofday assign_to="s,us"/><log message="EV [call_id] answered [$s] [$us] 200"/></action>
  </recv>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Contact: <sip:[caller]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""

PLAY = """  <nop><action><exec play_pcap_audio="{pcap}"/></action></nop>
"""

CALLER_BYE = """  <pause milliseconds="{hold_ms}"/>
{stamp}  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {bye_cseq} BYE
      Contact: <sip:[caller]@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>
"""

AGENT_BYE = """  <recv request="BYE" timeout="{bye_timeout_ms}">
    <action><gettimeofday assign_to="s,us"/><log message="EV [call_id] bye_received [$s] [$us]"/></action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>
"""

FINAL = """  <recv response="{code}">
    <action>
      <ereg regexp="Retry-After: *([0-9]+)" search_in="msg" check_it="false" assign_to="ra_all,ra"/>
      <gettimeofday assign_to="s,us"/>
      <log message="EV [call_id] final [$s] [$us] {code} retry_after=[$ra]"/>
      <log message="HDR [call_id] [$ra_all]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port];transport=[transport] SIP/2.0
      [last_Via:]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
"""

CANCEL = """  <pause milliseconds="{cancel_ms}"/>
{stamp}  <send>
    <![CDATA[
      CANCEL sip:[service]@[remote_ip]:[remote_port];transport=[transport] SIP/2.0
      [last_Via:]
      From: "[caller]" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
"""


@dataclass(frozen=True)
class CallScenario:
    """What the simulated caller does. `expect` is "answer" or a final status code (487 for cancel)."""

    expect: str | int = "answer"
    hangup: str = "caller"  # "caller": BYE after hold_ms; "agent": wait for the gateway's BYE
    hold_ms: int = 500
    bye_timeout_ms: int = 30_000
    cancel_ms: int = 0  # > 0: CANCEL this long after 180 Ringing (expect becomes 487)
    ringing_required: bool = False
    pcap: str = ""  # G.711 RTP to play after the answer
    media_port: str = "[media_port]"  # a number sends the gateway's RTP to that port instead of sipp's
    payloads: str = "0 8"
    auth: tuple[str, str] | None = None  # (user, password): expect a 407 first, then authenticate
    early_media: bool = False  # accept a 183 Session Progress after the 180

    def xml(self) -> str:
        sdp = SDP.format(media_port=self.media_port, payloads=self.payloads)
        sdp = "\n".join("      " + line for line in sdp.splitlines())
        parts = [INVITE.format(sdp=sdp, stamp=stamp("invite"))]
        cseq = 1
        if self.auth is not None:
            parts.append(AUTH.format(sdp=sdp, user=self.auth[0], password=self.auth[1]))
            cseq = 2
        if self.cancel_ms:
            parts += [
                RINGING.format(optional="false"),
                CANCEL.format(cancel_ms=self.cancel_ms, stamp=stamp("cancel_sent")),
            ]
            parts.append(FINAL.format(code=487, cseq=1))
        elif self.expect == "answer":
            parts.append(RINGING.format(optional="false" if self.ringing_required else "true"))
            parts.append(PROGRESS if self.early_media else "")
            parts.append(ANSWERED.format(cseq=cseq))
            if self.pcap:
                parts.append(PLAY.format(pcap=self.pcap))
            if self.hangup == "caller":
                parts.append(
                    CALLER_BYE.format(hold_ms=self.hold_ms, stamp=stamp("bye_sent"), bye_cseq=cseq + 1)
                )
            else:
                parts.append(AGENT_BYE.format(bye_timeout_ms=self.bye_timeout_ms))
        else:
            parts.append(RINGING.format(optional="true"))
            parts.append(PROGRESS if self.early_media else "")
            parts.append(FINAL.format(code=int(self.expect), cseq=cseq))
        body = "".join(parts)
        head = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="agentdispatch">\n'
        return f"{head}{body}</scenario>\n"
