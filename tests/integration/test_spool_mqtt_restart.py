#!/usr/bin/python3
"""Fault 2: the MQTT broker is stopped and restarted under load; nothing is lost.

Six scripted QMP peers stream events into the bridge (QoS 1, spool on). Mid-stream the
broker is stopped for 8 s, then started again on the same port with its persistence file, as
a production broker restarts. The recording subscriber holds a persistent session (clean
start off), so the broker keeps what it acknowledged for it. The bridge must keep reading
(the spool absorbs the outage), reconnect, and publish every event: the stream checker sees
per VM sequence 1..n, no gap, in order, duplicates only with identical ids.

The broker is stopped with SIGTERM, which makes mosquitto save its sessions: a SIGKILLed
broker loses messages it had already acknowledged, which no client can prevent."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, peers, procs, streamcheck  # noqa: E402

VMS = 6
PER_VM = 52 * 16
OUTAGE = 8.0
BRIDGE_ID = "spool-m"


def event_envelopes(sub):
    sub.poll()
    return [m.json for m in sub.messages if "/event/" in m.topic and m.json]


with check.Test("spool_mqtt_restart") as t:
    d = t.workdir
    spool = os.path.join(d, "spool")
    broker = mqtt.Broker(d, persistence=True).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker, client_id="qbtest-durable")
    sub.start()
    vms = peers.start_event_peers(d, ["vm%d" % i for i in range(VMS)], PER_VM)
    # a small memory window (200), so the outage can only be bridged from the spool
    br = bridge.Bridge(d, vms, bridge_id=BRIDGE_ID, log_level="info", stdout_path=False,
                       extra_yaml="  - { type: mqtt, host: 127.0.0.1, port: %d, qos: 1, "
                                  "queue_max_messages: 200 }\n"
                                  "spool: { directory: \"%s\", max_size: 64MiB, "
                                  "segment_size: 1MiB }\n" % (broker.port, spool))
    t.add_log("bridge", br.log)
    br.start()

    t.section("stream flows")
    procs.wait_until(lambda: len(event_envelopes(sub)) >= VMS * 40, 30, "the stream to flow")
    t.ok("subscriber sees the stream", len(event_envelopes(sub)))

    t.section("broker stopped for %.0f s, then restarted" % OUTAGE)
    broker.stop()
    time.sleep(OUTAGE)
    t.expect(br.alive(), "bridge still running during the outage")
    broker.start()
    t.ok("broker restarted on port %d" % broker.port)

    t.section("everything delivered")

    def complete():
        rep = streamcheck.check(event_envelopes(sub), expect_first={n: 1 for n, _ in vms})
        return rep if all(rep.vms.get(n, {}).get("unique", 0) >= PER_VM + 2 for n, _ in vms) \
            else None
    try:
        procs.wait_until(complete, 90, "every VM's %d events" % (PER_VM + 2), interval=0.5)
    except TimeoutError:
        pass
    time.sleep(1.0)
    rep = streamcheck.check(event_envelopes(sub), expect_first={n: 1 for n, _ in vms},
                            expect_counts={n: PER_VM + 2 for n, _ in vms})
    t.expect(rep.ok(), "stream check across the broker restart", str(rep))
    t.expect(not br.log_lines("pausing reading from"), "QMP reads never paused")
    t.expect(br.log_lines("falling behind"), "the MQTT transport was fed from the spool")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0", rc)
    print("FIGURES spool_mqtt_restart: vms=%d qmp_events_sent=%d envelopes_expected=%d "
          "delivered=%d unique=%d duplicates=%d outage=%.0fs"
          % (VMS, VMS * PER_VM, VMS * (PER_VM + 2), rep.delivered, rep.unique, rep.duplicates,
             OUTAGE))
