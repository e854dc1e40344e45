/*
 * test_libvirt_disks.c - node names to disk targets from a domain's live XML
 * (bridge/libvirt_disks.c), and the run states libvirt's state and reason
 * give (libvirt_queries.c's pure part).
 *
 * The XML is shaped like libvirt 9.0's live XML of the test harness's writer
 * domain (hda holds index 2 although it comes first: the index is not the
 * position), plus a qcow2 disk with a backing chain, a CD-ROM without medium
 * and hostile entries.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "libvirt_disks.h"
#include "libvirt_queries.h"

#include <string.h>

static const char live_xml[] =
    "<domain type='qemu' id='1'>\n"
    "  <name>vm1</name>\n"
    "  <devices>\n"
    "    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
    "    <disk type='file' device='disk'>\n"
    "      <driver name='qemu' type='raw' error_policy='stop' rerror_policy='stop'/>\n"
    "      <source file='/tmp/w/vm1.fs/disk.raw' index='2'/>\n"
    "      <backingStore/>\n"
    "      <target dev='hda' bus='ide'/>\n"
    "      <alias name='ide0-0-0'/>\n"
    "    </disk>\n"
    "    <disk type='file' device='disk'>\n"
    "      <driver name='qemu' type='raw'/>\n"
    "      <source file='/tmp/w/vm1.boot.img' index='1'/>\n"
    "      <target dev='hdc' bus='ide'/>\n"
    "      <readonly/>\n"
    "    </disk>\n"
    "    <disk type='file' device='disk'>\n"
    "      <driver name='qemu' type='qcow2'/>\n"
    "      <source file='/var/lib/images/top.qcow2' index='5'/>\n"
    "      <backingStore type='file' index='4'>\n"
    "        <format type='qcow2'/>\n"
    "        <source file='/var/lib/images/mid.qcow2'/>\n"
    "        <backingStore type='file' index='3'>\n"
    "          <format type='raw'/>\n"
    "          <source file='/var/lib/images/base.raw'/>\n"
    "          <backingStore/>\n"
    "        </backingStore>\n"
    "      </backingStore>\n"
    "      <target dev='vda' bus='virtio'/>\n"
    "    </disk>\n"
    "    <disk type='file' device='cdrom'>\n"
    "      <driver name='qemu'/>\n"
    "      <target dev='sda' bus='sata'/>\n"
    "      <readonly/>\n"
    "    </disk>\n"
    "    <disk type='file' device='disk'>\n"
    "      <source file='/x' index='9'/>\n"
    "      <target dev='../etc' bus='virtio'/>\n"
    "    </disk>\n"
    "    <disk type='file' device='disk'>\n"
    "      <source file='/y' index='8'/>\n"
    "    </disk>\n"
    "  </devices>\n"
    "</domain>\n";

static struct qb_lv_disks *parse(size_t *skipped)
{
    struct qb_lv_disks *d = NULL;

    assert_int_equal(qb_lv_disks_parse(live_xml, strlen(live_xml), &d, skipped), QB_OK);
    assert_non_null(d);
    return d;
}

static void test_targets_and_sources(void **state)
{
    size_t skipped = 0;
    struct qb_lv_disks *d = parse(&skipped);
    const struct qb_lv_disk *k;

    (void)state;
    /* the bad target and the disk with none are left out, and counted */
    assert_int_equal(d->n_disks, 4);
    assert_int_equal(skipped, 2);
    k = qb_lv_disks_by_target(d, "hda");
    assert_non_null(k);
    assert_int_equal(k->index, 2);
    assert_string_equal(k->file, "/tmp/w/vm1.fs/disk.raw");
    assert_string_equal(k->driver, "raw");
    assert_false(k->read_only);
    assert_true(qb_lv_disks_by_target(d, "hdc")->read_only);
    k = qb_lv_disks_by_target(d, "sda");
    assert_true(k->cdrom);
    assert_null(k->file);
    assert_int_equal(k->index, 0);
    assert_null(qb_lv_disks_by_target(d, "../etc"));
    assert_null(qb_lv_disks_by_target(d, "vdz"));
    qb_lv_disks_free(d);
}

static void test_node_names(void **state)
{
    struct qb_lv_disks *d = parse(NULL);
    unsigned depth = 99;
    char buf[48];

    (void)state;
    /* by the index, not by the position: hda is first in the XML and holds index 2 */
    assert_string_equal(qb_lv_disks_by_node(d, "libvirt-2-format", &depth)->target, "hda");
    assert_int_equal(depth, 0);
    assert_string_equal(qb_lv_disks_by_node(d, "libvirt-2-storage", NULL)->target, "hda");
    assert_string_equal(qb_lv_disks_by_node(d, "libvirt-1-format", NULL)->target, "hdc");
    /* images below the top belong to their disk, with their depth */
    assert_string_equal(qb_lv_disks_by_node(d, "libvirt-5-format", &depth)->target, "vda");
    assert_int_equal(depth, 0);
    assert_string_equal(qb_lv_disks_by_node(d, "libvirt-4-format", &depth)->target, "vda");
    assert_int_equal(depth, 1);
    assert_string_equal(qb_lv_disks_by_node(d, "libvirt-3-storage", &depth)->target, "vda");
    assert_int_equal(depth, 2);
    /* not libvirt's names, or no such image */
    assert_null(qb_lv_disks_by_node(d, "libvirt-7-format", NULL));
    assert_null(qb_lv_disks_by_node(d, "libvirt-2-formats", NULL));
    assert_null(qb_lv_disks_by_node(d, "libvirt--format", NULL));
    assert_null(qb_lv_disks_by_node(d, "libvirt-2", NULL));
    assert_null(qb_lv_disks_by_node(d, "drive-virtio-disk0", NULL));
    assert_null(qb_lv_disks_by_node(d, "libvirt-99999999999999999999-format", NULL));
    assert_null(qb_lv_disks_by_node(d, "", NULL));
    assert_null(qb_lv_disks_by_node(d, NULL, NULL));
    assert_true(qb_lv_disk_node_name(qb_lv_disks_by_target(d, "hda"), buf, sizeof(buf)));
    assert_string_equal(buf, "libvirt-2-format");
    assert_false(qb_lv_disk_node_name(qb_lv_disks_by_target(d, "sda"), buf, sizeof(buf)));
    qb_lv_disks_free(d);
}

static void test_job_ids(void **state)
{
    struct qb_lv_disks *d = parse(NULL);

    (void)state;
    assert_string_equal(qb_lv_disks_by_job(d, "vda")->target, "vda");
    assert_string_equal(qb_lv_disks_by_job(d, "copy-vda-libvirt-5-format")->target, "vda");
    assert_string_equal(qb_lv_disks_by_job(d, "commit-hda-libvirt-2-format")->target, "hda");
    assert_string_equal(qb_lv_disks_by_job(d, "pull-libvirt-4-format")->target, "vda");
    assert_null(qb_lv_disks_by_job(d, "copy-vdz-libvirt-77-format"));
    assert_null(qb_lv_disks_by_job(d, ""));
    assert_null(qb_lv_disks_by_job(d, "----"));
    qb_lv_disks_free(d);
}

static void test_not_a_domain(void **state)
{
    struct qb_lv_disks *d = (void *)1;
    static const char net[] = "<network><name>default</name></network>";
    static const char broken[] = "<domain><devices><disk>";
    /* an external entity must not be read: no network, no file */
    static const char entity[] = "<!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/passwd'>]>"
                                 "<domain><devices><disk><target dev='&x;'/></disk></devices>"
                                 "</domain>";
    size_t skipped = 0;

    (void)state;
    assert_int_equal(qb_lv_disks_parse(net, strlen(net), &d, NULL), QB_EINVAL);
    assert_null(d);
    assert_int_equal(qb_lv_disks_parse(broken, strlen(broken), &d, NULL), QB_EINVAL);
    assert_int_equal(qb_lv_disks_parse("", 0, &d, NULL), QB_EINVAL);
    /* refused whole, or read without the entity: never a target taken from the file */
    if (qb_lv_disks_parse(entity, strlen(entity), &d, &skipped) == QB_OK) {
        assert_int_equal(d->n_disks, 0);
        qb_lv_disks_free(d);
    } else {
        assert_null(d);
    }
}

static void test_run_states(void **state)
{
    bool running = true;

    (void)state;
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_IOERROR, &running),
                        "io-error");
    assert_false(running);
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_USER, &running),
                        "paused");
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_WATCHDOG, &running),
                        "watchdog");
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_CRASHED, &running),
                        "guest-panicked");
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_PAUSED, VIR_DOMAIN_PAUSED_STARTING_UP, &running),
                        "prelaunch");
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_RUNNING, VIR_DOMAIN_RUNNING_BOOTED, &running),
                        "running");
    assert_true(running);
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_PMSUSPENDED, 0, &running), "suspended");
    assert_false(running);
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_SHUTOFF, 0, &running), "shutdown");
    assert_string_equal(qb_lv_run_state(12345, 0, &running), "unknown");
    assert_string_equal(qb_lv_run_state(VIR_DOMAIN_PAUSED, 999, &running), "paused");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_targets_and_sources),
        cmocka_unit_test(test_node_names),
        cmocka_unit_test(test_job_ids),
        cmocka_unit_test(test_not_a_domain),
        cmocka_unit_test(test_run_states),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
