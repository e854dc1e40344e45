#!/usr/bin/python3
"""Per-transport filters: one bridge, two transports fed the same stream of a
scripted QMP peer (49 RTC_CHANGE -> qmp.event, then RTC_CHANGE, STOP, RESUME).
stdout has include: [qmp.vm.stopped, qmp.vm.state]: it gets the snapshot and the
STOP, nothing else. MQTT has exclude: [qmp.event, "bridge.*"]: it gets stopped,
resumed and the state (event stream and retained state topic), never a qmp.event
or a bridge event. Both transports count what they left out
(qmp_bridge_envelopes_filtered_total). Run once with memory queues only and once
with the spool: there every record, filtered out for one transport or not, ends
up released (the spool empties), so a filtered record counts as done."""
import os
import re
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, peers, procs, util  # noqa: E402

COUNT = 52  # 50 RTC_CHANGE, one STOP, one RESUME (qmp_peer's events pattern)


def metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        return r.read().decode()


def sample(text, name, labels=""):
    m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return float(m.group(1)) if m else None


def run(t, d, broker, sub, spool):
    bid = "filt-spool" if spool else "filt-mem"
    wd = os.path.join(d, bid)
    os.mkdir(wd)
    vms = peers.start_event_peers(wd, ["vm1"], COUNT)
    events = os.path.join(wd, "events.jsonl")
    port = util.free_port()
    extra = ("  - type: stdout\n"
             "    path: \"%s\"\n"
             "    include: [qmp.vm.stopped, qmp.vm.state]\n"
             "  - type: mqtt\n"
             "    port: %d\n"
             "    exclude: [qmp.event, \"bridge.*\"]\n"
             "metrics: { listen: \"127.0.0.1:%d\" }\n" % (events, broker.port, port))
    if spool:
        extra += "spool: { directory: \"%s\" }\n" % os.path.join(wd, "spool")
    br = bridge.Bridge(wd, vms, bridge_id=bid, stdout_path=False, extra_yaml=extra).start()
    t.add_log("bridge " + bid, br.log)

    sub.wait_for(lambda m: m.topic == "qmp/%s/vm1/event/qmp.vm.resumed" % bid, 30,
                 "qmp.vm.resumed on MQTT")
    procs.wait_until(lambda: any(e["type"] == "qmp.vm.stopped" for e in util.read_jsonl(events)),
                     20, "qmp.vm.stopped on stdout")
    # everything was published once both transports confirmed all of it: filtered counts settle
    text = procs.wait_until(
        lambda: (lambda x: x if sample(x, "qmp_bridge_envelopes_filtered_total",
                                       '{transport="stdout"}') is not None and
                 sample(x, "qmp_bridge_queue_messages", '{transport="mqtt"}') == 0 and
                 sample(x, "qmp_bridge_queue_messages", '{transport="stdout"}') == 0 else None)(
            metrics(port)), 20, "both queues empty")

    types = [e["type"] for e in util.read_jsonl(events)]
    t.expect(set(types) == {"qmp.vm.state", "qmp.vm.stopped"} and types.count("qmp.vm.stopped") == 1,
             "%s stdout (include): only the snapshot and the STOP" % bid, types)
    env = check.vm_envelopes(sub, bid, "vm1")
    mtypes = [m.type for m in env if not check.on_state_topic(m)]
    t.expect("qmp.vm.stopped" in mtypes and "qmp.vm.resumed" in mtypes and "qmp.vm.state" in mtypes,
             "%s mqtt (exclude): stopped, resumed and the snapshot on the event stream" % bid, mtypes)
    t.expect(not [x for x in mtypes if x == "qmp.event" or x.startswith("bridge.")],
             "%s mqtt (exclude): no qmp.event, no bridge.* event" % bid, mtypes)
    t.expect(any(check.on_state_topic(m) for m in env), "%s mqtt: the state topic is fed" % bid)
    check.wait_retained_state(sub, bid, "vm1", lambda dd: dd["run_state"] == "running", "running")
    t.ok("%s mqtt: retained state says running after the RESUME" % bid)

    f_out = sample(text, "qmp_bridge_envelopes_filtered_total", '{transport="stdout"}')
    f_mqtt = sample(text, "qmp_bridge_envelopes_filtered_total", '{transport="mqtt"}')
    # stdout leaves out 50 qmp.event, bridge.vm.connected and qmp.vm.resumed (state copies never
    # reach a stream without a retained channel); mqtt leaves out 50 qmp.event and the connect
    t.expect(f_out == 52 and f_mqtt == 51,
             "%s: filtered counts (stdout %s, mqtt %s)" % (bid, f_out, f_mqtt))
    if spool:
        def drained():
            x = metrics(port)
            app = sample(x, "qmp_bridge_spool_appended_total")
            rel = sample(x, "qmp_bridge_spool_released_total")
            return (app, rel) if sample(x, "qmp_bridge_spool_records") == 0 and app and rel == app \
                else None
        app, rel = procs.wait_until(drained, 20, "the spool to release every record",
                                    on_fail=lambda: print(metrics(port)))
        t.ok("%s: every record released (appended %d, released %d)" % (bid, app, rel))
    br.stop()


with check.Test("transport_filters") as t:
    d = t.workdir
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    t.section("memory queues")
    run(t, d, broker, sub, spool=False)
    t.section("with the spool")
    run(t, d, broker, sub, spool=True)
