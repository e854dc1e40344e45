#!/usr/bin/python3
"""ENOSPC through libvirt, end to end, to MQTT and Kafka at once.

A private libvirtd (qbtest/libvirt.py) runs the writer domain vm1: its data disk
hda is a raw file on a 4M tmpfs with error_policy='stop'. The bridge has only the
libvirt source (libvirt: {uri}), an MQTT, a Kafka (librdkafka's mock cluster,
read back with kcat) and a stdout transport. The domain starts paused after the
bridge is connected to libvirtd, so the bridge takes it through its STARTED
event; it is resumed once the bridge published its snapshot. Checked on every
transport: bridge.vm.connected (the domain's UUID, the libvirt address), the
snapshot (disk hda with node name libvirt-N-format, N the index of hda's source
in the live XML), then qmp.block.io_error (device hda, node_name, enospc, write,
stop) before qmp.vm.stopped (io-error, cause hda/enospc), every envelope
schema-valid and the sequence strictly increasing; the retained state says
io-error with hda's io_status nospace."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, kafka, libvirt, mqtt, procs  # noqa: E402

KEY = "test-host/vm1"

with check.Test("libvirt_enospc") as t:
    d = t.workdir
    lv = libvirt.Libvirtd(d).start()
    t.add_log("libvirtd", lv.libvirtd_log)
    broker = mqtt.Broker(d).start()
    t.add_log("mosquitto", broker.log)
    sub = mqtt.Subscriber(broker).start()
    t.add_log("subscriber", sub.out)
    mock = kafka.KafkaMock(d, brokers=1, topics=[("qmp.events", 1, 1), ("qmp.state", 1, 1)])
    t.add_log("kafka_mock", mock.log)
    mock.start()
    kc = kafka.KcatConsumer(mock.bootstrap, "qmp.events", d, name="kcat-events").start()
    t.add_log("kcat", kc.log)
    dom = libvirt.define_writer_domain(lv, d, "vm1", start=False)
    extra = ("  - { type: kafka, brokers: \"%s\" }\nlibvirt: { uri: %s }\n"
             % (mock.bootstrap, json.dumps(lv.uri)))
    br = bridge.Bridge(d, [], broker=broker, extra_yaml=extra).start()
    t.add_log("bridge", br.log)
    br.wait_log("libvirt: connected to")
    t.ok("the bridge is connected to the private libvirtd", lv.uri)

    t.section("the domain starts: the bridge takes it")
    dom.start(paused=True)
    sub.wait_for(lambda m: m.type == "qmp.vm.state" and m.json["subject"] == "vm1", 30,
                 "the snapshot of vm1")
    env = check.vm_envelopes(sub, "test-host", "vm1")
    t.expect(env[0].type == "bridge.vm.connected", "first envelope is bridge.vm.connected",
             check.summarize(env))
    con = env[0].data
    t.expect(con["uuid"] == dom.uuid.lower() and con["address"].startswith("libvirt:")
             and con["address"].endswith("#vm1"),
             "connected names the domain's UUID and its libvirt address", con)
    snap = env[1].data
    idx = dom.disk_indexes()["hda"]
    hda = check.disk(snap, "hda")
    t.expect(hda.get("node_name") == "libvirt-%d-format" % idx and hda.get("io_status") == "ok",
             "the snapshot names disk hda with its node name libvirt-%d-format" % idx, snap)
    t.expect(snap["running"] is False and snap["connected"] is True,
             "the snapshot says connected, not running (started paused)", snap)

    t.section("the guest runs into ENOSPC")
    lv.virsh("resume", "vm1")
    dom.wait_state(r"paused \(I/O error\)")
    t.ok("libvirt says paused (I/O error)")
    sub.wait_for(lambda m: m.type == "qmp.vm.stopped" and m.json["subject"] == "vm1", 30,
                 "qmp.vm.stopped of vm1")
    env = check.vm_envelopes(sub, "test-host", "vm1")
    i_err = check.first_index(env, lambda m: m.type == "qmp.block.io_error")
    i_stop = check.first_index(env, lambda m: m.type == "qmp.vm.stopped")
    t.expect(i_err >= 0, "qmp.block.io_error published", check.summarize(env))
    err = env[i_err].data
    t.expect(err["device"] == "hda" and err.get("node_name") == "libvirt-%d-format" % idx
             and err["errno"] == "enospc" and err["operation"] == "write"
             and err["action"] == "stop" and err.get("nospace") is True,
             "io_error: device hda (the target), node_name kept, enospc, write, stop", err)
    t.expect(i_err < i_stop, "io_error came before vm.stopped", (i_err, i_stop))
    stopped = env[i_stop].data
    cause = stopped.get("cause") or {}
    t.expect(stopped["reason"] == "io-error" and cause.get("device") == "hda"
             and cause.get("errno") == "enospc",
             "vm.stopped: reason io-error, cause hda/enospc", stopped)
    check.assert_increasing(env, "vm1 sequence")
    t.ok("vm1 sequence strictly increasing on MQTT", [m.json["sequence"] for m in env][-1])
    m = check.wait_retained_state(sub, "test-host", "vm1", lambda s: s["run_state"] == "io-error"
                                  and check.disk(s, "hda").get("io_status") == "nospace",
                                  "run_state io-error with hda io_status nospace")
    t.ok("retained state: io-error, hda nospace", m.json["sequence"])

    t.section("Kafka has the same story")

    def kafka_types():
        kc.read()
        envs = []
        for r in kc.records:
            e = kafka.structured_envelope(r)
            if r.key != KEY:
                raise check.CheckFailed("record keyed %r, expected %r" % (r.key, KEY))
            envs.append(e)
        return envs if any(e["type"] == "qmp.vm.stopped" for e in envs) else None
    kenv = procs.wait_until(kafka_types, 30, "qmp.vm.stopped on qmp.events")
    ktypes = [e["type"] for e in kenv]
    t.expect(ktypes.index("qmp.block.io_error") < ktypes.index("qmp.vm.stopped"),
             "Kafka: io_error before vm.stopped, every record a valid envelope keyed " + KEY,
             ktypes)
    mqtt_ids = {m.json["id"] for m in env}
    t.expect(all(e["id"] in mqtt_ids for e in kenv
                 if e["type"] in ("qmp.block.io_error", "qmp.vm.stopped")),
             "the same events (same ids) on Kafka and MQTT")
    kseq = [int(e["sequence"]) for e in kenv]
    t.expect(all(b > a for a, b in zip(kseq, kseq[1:])), "Kafka: sequence strictly increasing",
             kseq)

    t.section("stdout transport and shutdown")
    with open(br.events_path) as f:
        for line in f:
            if line.strip():
                mqtt.validate_envelope(json.loads(line))
    t.ok("events.jsonl: every envelope valid")
    rc = br.stop()
    t.expect(rc == 0, "bridge exits 0 on SIGTERM", rc)
    t.expect(dom.state().startswith("paused"), "the domain is left as it was (paused)", dom.state())
