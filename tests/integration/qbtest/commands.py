"""commands.py - build, sign and send qmp-bridge commands the way an orchestrator would.

A command is a CloudEvents 1.0 object with type qmp.command.<name>. The signature
(when the bridge has commands.hmac_key_file) is the hex HMAC-SHA256 of the canonical
command, the recipe of docs/commands-and-security.md (Signing) that examples/orchestrator.py
uses too: the object without "signature", keys sorted, no whitespace, UTF-8, integers
only; tests/unit/data/signing-vectors.json holds what it must produce.
"""
import datetime
import hashlib
import hmac
import json
import subprocess
import uuid


def now_rfc3339(offset_s=0.0):
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=offset_s)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(cmd):
    """The bytes a command's signature covers."""
    body = {k: v for k, v in cmd.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def sign(cmd, key):
    """cmd with "signature" set: hex HMAC-SHA256 of canonical(cmd) with key (bytes)."""
    return dict(cmd, signature=hmac.new(key, canonical(cmd), hashlib.sha256).hexdigest())


def make(name, vm, data=None, cmd_id=None, source="qbtest-orchestrator", time=None, key=None,
         bridge=None, reply_topic=None):
    """reply_topic: the "replytopic" attribute, the Response Topic the signature covers (a
    bridge with commands.hmac_key_file honours a Response Topic only when it matches)."""
    cmd = {"specversion": "1.0", "id": cmd_id or str(uuid.uuid4()), "source": source,
           "type": "qmp.command." + name, "subject": vm, "time": time or now_rfc3339(),
           "data": data or {}}
    if bridge:
        cmd["bridge"] = bridge
    if reply_topic:
        cmd["replytopic"] = reply_topic
    return sign(cmd, key) if key else cmd


def mqtt_publish(port, bridge_id, vm, payload, response_topic=None, correlation=None, qos=1):
    """Publishes a command (dict, str or bytes) with mosquitto_pub, MQTT 5."""
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", str(qos),
            "-t", "qmp/%s/%s/command" % (bridge_id, vm), "-s"]
    if response_topic:
        argv += ["-D", "publish", "response-topic", response_topic]
    if correlation:
        argv += ["-D", "publish", "correlation-data", correlation]
    subprocess.run(argv, input=payload, check=True, timeout=15)
