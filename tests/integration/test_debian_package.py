#!/usr/bin/python3
"""The Debian package: packaging/build-deb.sh builds it with `dpkg-buildpackage -us -uc -b`
from a scratch copy of the tree (packaging/debian as debian/); lintian finds no error
(warnings and infos are printed); the package holds the binary, the unit, the sysusers.d
and tmpfiles.d files, the conffile /etc/qmp-bridge/qmp-bridge.yaml, every JSON Schema and
both man pages; its maintainer scripts create the user before the socket directory.
Unpacked with `dpkg -x` into a scratch root (never installed on this machine), its binary
prints the changelog's version and accepts the shipped configuration with --check-config.
The man pages render without a groff warning (and the check does catch a broken page),
and qmp-bridge.yaml(5) documents every section and key of conf/qmp-bridge.example.yaml.
qmp-bridge(8) lists --status, the HTTP endpoints and every metric the code exports, and
each path in the FILES sections of both pages is in the package (dpkg -c) or created by
its unit, sysusers.d or tmpfiles.d files. The package carries the template unit and the
drop-in directory; its postinst makes the conffile and conf.d root:qmp-bridge 0640/0750
once sysusers has created the group. The licence is Apache-2.0: LICENSE is the text in
/usr/share/common-licenses/Apache-2.0 and debian/copyright points there; the changelog's
latest entry carries the Maintainer of debian/control."""
import glob
import gzip
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from qbtest import check, util  # noqa: E402

SRC = util.SOURCE_DIR
PKG = os.path.join(SRC, "packaging")


def run(argv, timeout=60, env=None, stdout=subprocess.PIPE):
    r = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout, env=env)
    out = r.stdout.decode("utf-8", "replace") if r.stdout is not None else ""
    return r.returncode, out, r.stderr.decode("utf-8", "replace")


def man_warnings(path):
    """groff's warnings for one page (man(7) macros, all warnings on), '' when clean."""
    env = dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80")
    rc, _out, err = run(["man", "--warnings", "-l", "-Tutf8", path], env=env)
    return err.strip() if err.strip() or rc == 0 else "man exited %d" % rc


def example_keys():
    """(top-level sections, every key) of conf/qmp-bridge.example.yaml, comments ignored."""
    sections, keys = [], set()
    with open(os.path.join(SRC, "conf", "qmp-bridge.example.yaml")) as f:
        for line in f:
            line = line.split(" #", 1)[0].rstrip()
            if not line or line.lstrip().startswith("#"):
                continue
            m = re.match(r"^([a-z_]+):", line)
            if m:
                sections.append(m.group(1))
            for k in re.findall(r"(?:^\s*-?\s*|[{,]\s*)([a-z_]+):(?=\s|$)", line):
                keys.add(k)
    return sections, keys


with check.Test("debian_package") as t:
    for tool in ("dpkg-buildpackage", "dh", "lintian", "fakeroot", "man"):
        t.expect(run(["sh", "-c", "command -v %s" % tool])[0] == 0, "%s is installed" % tool,
                 "run packaging/bootstrap-deps.sh")

    t.section("dpkg-buildpackage -us -uc -b (packaging/build-deb.sh)")
    out_dir = os.path.join(t.workdir, "out")
    build_log = os.path.join(t.workdir, "build.log")
    t.add_log("build", build_log)
    with open(build_log, "wb") as log:
        r = subprocess.run([os.path.join(PKG, "build-deb.sh"), out_dir], stdout=log,
                           stderr=subprocess.STDOUT, timeout=240)
    t.expect(r.returncode == 0, "the package builds", "exit %d, see the build log" % r.returncode)
    debs = [p for p in glob.glob(os.path.join(out_dir, "qmp-bridge_*.deb"))]
    changes = glob.glob(os.path.join(out_dir, "qmp-bridge_*.changes"))
    t.expect(len(debs) == 1 and len(changes) == 1, "one .deb and one .changes", os.listdir(out_dir))
    deb = debs[0]
    with open(os.path.join(PKG, "debian", "changelog")) as f:
        version = re.match(r"qmp-bridge \(([^)]+)\)", f.readline()).group(1)
    t.expect(os.path.basename(deb).startswith("qmp-bridge_%s_" % version), "named after the changelog version",
             os.path.basename(deb))

    t.section("lintian")
    rc, out, err = run(["lintian", "--pedantic", "--display-info", "--display-experimental",
                        "--show-overrides", "--tag-display-limit", "0", changes[0], deb], timeout=180)
    tags = [l for l in out.splitlines() if re.match(r"^[EWIPXO]: ", l)]
    for l in tags:
        print("    lintian: %s" % l)
    errors = [l for l in tags if l.startswith("E: ")]
    t.expect(rc == 0 and not errors, "lintian: no errors (%d warnings, %d other tags)" % (
        sum(l.startswith("W: ") for l in tags), sum(not l.startswith(("E: ", "W: ")) for l in tags)),
        (rc, errors, err[-500:]))
    t.expect(not [l for l in tags if l.startswith("W: ")], "lintian: no warnings")

    t.section("contents (dpkg -c) and control data")
    rc, out, _ = run(["dpkg", "-c", deb])
    files = {re.sub(r"^\./", "/", l.split()[5]) for l in out.splitlines() if len(l.split()) >= 6}
    files_in_deb = files
    wanted = ["/usr/bin/qmp-bridge", "/lib/systemd/system/qmp-bridge.service",
              "/usr/lib/sysusers.d/qmp-bridge.conf", "/usr/lib/tmpfiles.d/qmp-bridge.conf",
              "/etc/qmp-bridge/qmp-bridge.yaml", "/usr/share/man/man8/qmp-bridge.8.gz",
              "/usr/share/man/man5/qmp-bridge.yaml.5.gz",
              "/usr/share/doc/qmp-bridge/examples/qmp-bridge.example.yaml",
              "/usr/share/qmp-bridge/prometheus/qmp-bridge-rules.yml",
              "/usr/share/qmp-bridge/grafana/qmp-bridge-dashboard.json",
              "/lib/systemd/system/qmp-bridge@.service", "/etc/qmp-bridge/conf.d/",
              "/usr/share/doc/qmp-bridge/copyright"]
    for name in sorted(glob.glob(os.path.join(SRC, "schema", "v1", "*.json"))):
        wanted.append("/usr/share/qmp-bridge/schema/v1/" + os.path.basename(name))
    missing = [w for w in wanted if w not in files]
    t.expect(not missing, "the package holds the binary, units, sysusers/tmpfiles, conffile, man pages, "
             "alert rules, dashboard and all %d schemas" % (len(wanted) - 13), missing)
    rc, conffiles, _ = run(["dpkg-deb", "--info", deb, "conffiles"])
    t.expect(conffiles.split() == ["/etc/qmp-bridge/qmp-bridge.yaml"], "the config is a conffile", conffiles)
    rc, depends, _ = run(["dpkg-deb", "--field", deb, "Depends"])
    t.expect("systemd-sysusers" in depends and "libuv1" in depends, "Depends: sysusers provider and shared libraries",
             depends)
    rc, postinst, _ = run(["dpkg-deb", "--info", deb, "postinst"])
    t.expect(0 <= postinst.find("systemd-sysusers") < postinst.find("systemd-tmpfiles"),
             "postinst creates the user before the directory of its group", postinst[:600])
    t.expect("deb-systemd-helper" in postinst and "try-restart" in postinst,
             "postinst registers the unit (not enabled, not started) and try-restarts on upgrade")
    sysusers_at = postinst.find("systemd-sysusers")
    t.expect(0 <= sysusers_at < postinst.find("chown root:qmp-bridge")
             and "/etc/qmp-bridge/qmp-bridge.yaml:0640" in postinst
             and "/etc/qmp-bridge/conf.d:0750" in postinst and "dpkg-statoverride" in postinst,
             "postinst gives the conffile and conf.d to root:qmp-bridge 0640/0750 after sysusers, "
             "unless overridden", postinst[-900:])
    rc, prerm, _ = run(["dpkg-deb", "--info", deb, "prerm"])
    t.expect("deb-systemd-invoke stop qmp-bridge.service" in prerm, "prerm stops the service on remove")

    t.section("dpkg -x into a scratch root")
    root = os.path.join(t.workdir, "root")
    rc, _, err = run(["dpkg", "-x", deb, root])
    t.expect(rc == 0, "dpkg -x", err)
    exe = os.path.join(root, "usr", "bin", "qmp-bridge")
    rc, out, err = run(["ldd", exe])
    t.expect(rc == 0 and "not found" not in out, "every shared library of the binary resolves", out)
    rc, out, err = run([exe, "--version"])
    t.expect(rc == 0 and out.strip() == "qmp-bridge %s" % version.split("-")[0], "--version prints the package version",
             (rc, out, err))
    conf = os.path.join(root, "etc", "qmp-bridge", "qmp-bridge.yaml")
    rc, out, err = run([exe, "--check-config", "-c", conf])
    t.expect(rc == 0 and "configuration OK" in out, "the shipped config passes --check-config", (rc, out, err))
    for example in ("qmp-bridge.example.yaml", "minimal.yaml"):
        rc, out, err = run([exe, "--check-config", "-c",
                            os.path.join(root, "usr", "share", "doc", "qmp-bridge", "examples", example)])
        t.expect(rc == 0, "the shipped example %s passes --check-config" % example, (rc, out, err))
    with open(os.path.join(root, "lib", "systemd", "system", "qmp-bridge.service")) as a, \
            open(os.path.join(PKG, "systemd", "qmp-bridge.service")) as b:
        t.expect(a.read() == b.read(), "the packaged unit is packaging/systemd/qmp-bridge.service")

    t.section("licence, maintainer, changelog")
    with open(os.path.join(SRC, "LICENSE")) as a, open("/usr/share/common-licenses/Apache-2.0") as b:
        t.expect(a.read() == b.read(), "LICENSE is the Apache License 2.0 text")
    with open(os.path.join(root, "usr", "share", "doc", "qmp-bridge", "copyright")) as f:
        copyright_text = f.read()
    t.expect(re.search(r"(?m)^Files: \*\nCopyright: .+\nLicense: Apache-2\.0$", copyright_text)
             and "/usr/share/common-licenses/Apache-2.0" in copyright_text
             and "TBD" not in copyright_text,
             "the packaged copyright: Files: * under Apache-2.0, pointing at common-licenses")
    rc, maintainer, _ = run(["dpkg-deb", "--field", deb, "Maintainer"])
    rc, latest, _ = run(["dpkg-parsechangelog", "-l", os.path.join(PKG, "debian", "changelog"),
                         "-S", "Maintainer"])
    t.expect(maintainer.strip() and maintainer.strip() == latest.strip(),
             "the latest changelog entry is signed by the package's Maintainer", (maintainer, latest))

    t.section("man pages")
    broken = os.path.join(t.workdir, "broken.8")
    with open(broken, "w") as f:
        f.write('.TH BROKEN 8\n.SH NAME\nbroken \\- a test\n.XY undefined macro\n')
    t.expect(man_warnings(broken) != "", "the warning check catches an undefined macro", man_warnings(broken))
    for page, title in (("man8/qmp-bridge.8.gz", "QMP-BRIDGE(8)"), ("man5/qmp-bridge.yaml.5.gz", "QMP-BRIDGE.YAML(5)")):
        path = os.path.join(root, "usr", "share", "man", page)
        t.expect(man_warnings(path) == "", "%s renders without warnings" % page, man_warnings(path))
        rc, text, _ = run(["man", "-l", "-Tutf8", path], env=dict(os.environ, LC_ALL="C.UTF-8", MANWIDTH="80"))
        text = re.sub(r".\x08", "", text)  # nroff's overstrike bold and underline
        t.expect(text.startswith(title) and "\nNAME\n" in text and "\nSEE ALSO\n" in text,
                 "%s has its title, NAME and SEE ALSO" % page, text[:200])
    for src in ("qmp-bridge.8", "qmp-bridge.yaml.5"):
        rc, _, err = run(["groff", "-man", "-ww", "-z", os.path.join(PKG, "man", src)])
        t.expect(rc == 0 and not err.strip(), "groff -man -ww -z %s: clean" % src, err)

    with gzip.open(os.path.join(root, "usr", "share", "man", "man5", "qmp-bridge.yaml.5.gz"), "rt") as f:
        page5 = f.read()
    sections, keys = example_keys()
    missing = [s for s in sections if ".SH SECTION %s\n" % s not in page5]
    t.expect(sections and not missing, "qmp-bridge.yaml(5) has a section for each of %s" % ", ".join(sections),
             missing)
    undocumented = sorted(k for k in keys - set(sections) if not re.search(r"(?m)^\.BI? %s:" % re.escape(k), page5))
    t.expect(not undocumented, "qmp-bridge.yaml(5) documents all %d keys of the example" % len(keys), undocumented)

    with gzip.open(os.path.join(root, "usr", "share", "man", "man8", "qmp-bridge.8.gz"), "rt") as f:
        page8 = f.read()
    t.expect(re.search(r"(?m)^\.B \\-\\-status$", page8), "qmp-bridge(8) documents --status")
    endpoints = ("/metrics", "/healthz", "/readyz", "/vms")
    t.expect(all(re.search(r"(?m)^\.B %s$" % e, page8) for e in endpoints),
             "qmp-bridge(8) has an entry for each HTTP endpoint %s" % ", ".join(endpoints))
    exported = set()
    for src in glob.glob(os.path.join(SRC, "bridge", "*.c")) + glob.glob(os.path.join(SRC, "transports", "*.c")):
        with open(src) as f:
            exported |= set(re.findall(r'"(qmp_bridge_[a-z0-9_]+)"', f.read()))
    listed = set(re.findall(r"(?m)^\.BR? (qmp_bridge_[a-z0-9_]+)(?=\s|$)", page8))
    t.expect(exported and exported == listed, "qmp-bridge(8) lists the %d metrics the code exports, no other"
             % len(exported), (sorted(exported - listed), sorted(listed - exported)))

    # FILES: every path is shipped, or made by the unit / sysusers / tmpfiles at run time.
    made = ""
    for name in ("qmp-bridge.service", "qmp-bridge@.service", "qmp-bridge.sysusers", "qmp-bridge.tmpfiles"):
        with open(os.path.join(PKG, "systemd", name)) as f:
            made += f.read()
    unlisted = []
    for page in (page8, page5):
        files = page[page.index("\n.SH FILES\n"):]
        files = files[:files.index("\n.SH ", 1)]
        for line in re.findall(r"(?m)^\.IR? /.*$", files):
            if " NAME " in line:  # an instance's paths: the template unit's, checked in test_systemd_unit
                continue
            path = line.split()[1]
            if path.startswith(("/var/lib/", "/run/")):
                name = path.split("/")[3] if path.startswith("/var/lib/") else path.split("/")[2]
                ok = re.search(r"(Directory=|^d /run/|^u .* /var/lib/)\S*%s" % re.escape(name), made, re.M) \
                    or ("/" + name) in made
            else:
                ok = path in files_in_deb or path.rstrip("/") + "/" in files_in_deb
            if not ok:
                unlisted.append(path)
    t.expect(not unlisted, "every path in the man pages' FILES sections is installed or made by the unit",
             unlisted)
