#!/usr/bin/python3
"""Configuration for fleets with real files: drop-ins beside the main file and
${env:}, ${file:}, ${cred:} references, checked by --check-config and picked
up by a running bridge.

- --check-config lists the drop-ins it merged; an error in a drop-in exits 1
  naming the drop-in's file:line:column; a ${file:} that does not exist exits 1
  naming the file and the key's place; a ${cred:} without
  $CREDENTIALS_DIRECTORY says so.
- A bridge whose main file (bridge.yaml) holds one VM and an MQTT transport
  against a mosquitto that refuses anonymous clients: the user name comes from
  ${file:} and the password file from $CREDENTIALS_DIRECTORY (what systemd's
  LoadCredential= provides) through ${env:}. The VM of the drop-in
  bridge.d/10-more.yaml publishes its retained state through that broker, so
  the drop-in was merged and the secrets reached the transport.
- A second drop-in written while the bridge runs is read on SIGHUP: its VM
  connects and publishes its state."""
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import bridge, check, mqtt, peers, procs, util  # noqa: E402

BIN = bridge.binary()
BRIDGE_ID = "fleet-host"
USER, PASSWORD = "bridge-user", "pw-from-a-credential"


def run(*args, env=None):
    r = subprocess.run([BIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=20, env=env)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def fetch_state(broker, vm):
    """The retained state of vm, read as an authenticated client, or "" if there is none yet."""
    r = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-u", USER,
                        "-P", PASSWORD, "-V", "mqttv5", "-t", "qmp/%s/%s/state" % (BRIDGE_ID, vm),
                        "-C", "1", "-W", "2", "--retained-only"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
    return r.stdout.decode().strip()


def retained_state(broker, vm, timeout=20.0):
    """Waits for vm's retained state (the bridge may still be connecting); returns it or ""."""
    try:
        return procs.wait_until(lambda: fetch_state(broker, vm), timeout,
                                "the retained state of %s" % vm, interval=0.2)
    except TimeoutError:  # the caller's check reports it
        return ""


with check.Test("config_fleet") as t:
    d = t.workdir
    br = bridge.Bridge(d, [], bridge_id=BRIDGE_ID, stdout_path=False)  # its file is ours below
    conf = br.conf
    dropins = os.path.join(d, "bridge.d")
    creds = os.path.join(d, "creds")
    os.mkdir(dropins, 0o700)
    os.mkdir(creds, 0o700)

    t.section("an authenticating mosquitto, the secrets, two VMs")
    broker = mqtt.Broker(d)
    passwd = os.path.join(d, "mosquitto.passwd")
    subprocess.run(["mosquitto_passwd", "-b", "-c", passwd, USER, PASSWORD], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(broker.conf, "w") as f:
        f.write("listener %d 127.0.0.1\nallow_anonymous false\npassword_file %s\n"
                "persistence false\n" % (broker.port, passwd))
        # started as root, mosquitto would become user mosquitto and could not read the
        # password file in our private workdir
        if os.geteuid() == 0:
            f.write("user root\n")
    broker.start()
    t.add_log("mosquitto", broker.log)
    write(os.path.join(d, "mqtt.user"), USER + "\n")
    write(os.path.join(creds, "mqtt.pw"), PASSWORD + "\n", 0o400)
    vms = dict(peers.start_event_peers(d, ["vm-main", "vm-dropin", "vm-reload"], 1000000,
                                       interval=0.05))

    write(conf, "\n".join([
        "bridge: { id: %s, log_level: debug }" % BRIDGE_ID,
        "qmp: { reconnect_initial: 100ms, reconnect_max: 1s }",
        "vms:",
        "  - { name: vm-main, qmp: \"unix:%s\" }" % vms["vm-main"],
        "transports:",
        "  - type: mqtt",
        "    port: %d" % broker.port,
        "    username: ${file:%s}" % os.path.join(d, "mqtt.user"),
        "    password_file: \"${env:CREDENTIALS_DIRECTORY}/mqtt.pw\"",
        ""]))
    write(os.path.join(dropins, "10-more.yaml"),
          "vms:\n  - { name: vm-dropin, qmp: \"unix:%s\" }\n" % vms["vm-dropin"])
    env = dict(os.environ, CREDENTIALS_DIRECTORY=creds)

    t.section("--check-config")
    rc, out, err = run("-c", conf, "--check-config", env=env)
    t.expect(rc == 0 and "2 VMs" in out and "drop-in %s/10-more.yaml" % dropins in out,
             "the merged configuration is valid and its drop-in is listed", (rc, out, err))
    rc, out, err = run("-c", conf, "--check-config")
    t.expect(rc == 1 and "bridge.yaml:9:20: transports[0].password_file: "
             "${env:CREDENTIALS_DIRECTORY}: environment variable CREDENTIALS_DIRECTORY is not set"
             in err, "without $CREDENTIALS_DIRECTORY: exit 1 naming the reference and the key",
             (rc, err))
    bad = os.path.join(dropins, "20-bad.yaml")
    write(bad, "qmp:\n  command_timeout: soon\n")
    rc, out, err = run("-c", conf, "--check-config", env=env)
    t.expect(rc == 1 and "%s:2:20: qmp.command_timeout: expected a duration" % bad in err,
             "an error in a drop-in names the drop-in's file:line:column", err.strip())
    write(bad, "transports:\n  - { type: kafka, brokers: \"${file:%s/nope}\" }\n" % d)
    rc, out, err = run("-c", conf, "--check-config", env=env)
    t.expect(rc == 1 and "%s:2:29: transports[1].brokers: ${file:%s/nope}: cannot read '%s/nope'"
             % (bad, d, d) in err, "a missing ${file:} names the file and the key's place",
             err.strip())
    os.unlink(bad)

    t.section("a running bridge: the drop-in's VM, the secrets from ${file:} and ${cred:}")
    os.environ["CREDENTIALS_DIRECTORY"] = creds
    try:
        br.start()
    finally:
        del os.environ["CREDENTIALS_DIRECTORY"]
    t.add_log("bridge", br.log)
    t.expect(br.wait_log("starting:", "with 1 drop-ins") and br.wait_log("drop-in %s/10-more.yaml"
                                                                           % dropins),
             "the start-up log names the drop-in")
    for vm in ("vm-main", "vm-dropin"):
        state = retained_state(broker, vm)
        t.expect("qmp.vm.state" in state,
                 "%s's retained state reached the authenticating broker" % vm, state)

    t.section("SIGHUP re-reads the drop-ins")
    write(os.path.join(dropins, "20-reload.yaml"),
          "vms:\n  - { name: vm-reload, qmp: \"unix:%s\" }\n" % vms["vm-reload"])
    os.kill(br.proc.pid, signal.SIGHUP)
    br.wait_log("reload:", "in force: VMs +1 -0")
    state = retained_state(broker, "vm-reload")
    t.expect("qmp.vm.state" in state,
             "the VM of a drop-in added at run time connected after SIGHUP", state)
    t.expect(br.stop() == 0, "SIGTERM: exit 0")
