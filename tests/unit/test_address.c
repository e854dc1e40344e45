/*
 * test_address.c - the one address parser (bridge/address.c): the forms each
 * caller accepts, and the socket addresses they become.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "address.h"
#include "error.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

static void test_qmp_form(void **state)
{
    struct qb_address a;

    (void)state;
    assert_int_equal(qb_address_parse("unix:/run/vm1.qmp", QB_ADDRESS_QMP, &a), QB_OK);
    assert_true(a.is_unix);
    assert_string_equal(a.path, "/run/vm1.qmp");
    assert_int_equal(qb_address_parse("unix:relative.sock", QB_ADDRESS_QMP, &a), QB_OK);
    assert_int_equal(qb_address_parse("tcp:127.0.0.1:4444", QB_ADDRESS_QMP, &a), QB_OK);
    assert_false(a.is_unix);
    assert_int_equal(a.host_len, 9);
    assert_memory_equal(a.host, "127.0.0.1", 9);
    assert_int_equal(a.port, 4444);
    /* bare IPv6: the port follows the last ':' */
    assert_int_equal(qb_address_parse("tcp:::1:4444", QB_ADDRESS_QMP, &a), QB_OK);
    assert_int_equal(a.host_len, 3);
    assert_false(a.bracketed);
    assert_int_equal(qb_address_parse("tcp:[::1]:4444", QB_ADDRESS_QMP, &a), QB_OK);
    assert_true(a.bracketed);
    assert_memory_equal(a.host, "::1", 3);

    static const char *const bad[] = {
        "",         "unix:",    "tcp:",   "tcp:host", "tcp::4444", "tcp:h:0", "tcp:h:65536",
        "tcp:h:+1", "tcp:h:1 ", "tcp:h:", "tcp:[]:1", "udp:h:1",   "/run/x",  "h:1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (qb_address_parse(bad[i], QB_ADDRESS_QMP, &a) != QB_EINVAL)
            fail_msg("'%s' accepted as a QMP address", bad[i]);
    assert_int_equal(qb_address_parse(NULL, QB_ADDRESS_QMP, &a), QB_EINVAL);
}

static void test_http_form(void **state)
{
    struct qb_address a;

    (void)state;
    assert_int_equal(qb_address_parse("127.0.0.1:0", QB_ADDRESS_HTTP, &a), QB_OK);
    assert_int_equal(a.port, 0);
    assert_int_equal(qb_address_parse("localhost:9100", QB_ADDRESS_HTTP, &a), QB_OK);
    assert_int_equal(qb_address_parse("[::1]:9100", QB_ADDRESS_HTTP, &a), QB_OK);
    assert_true(a.bracketed);
    assert_int_equal(qb_address_parse("unix:/run/qb.sock", QB_ADDRESS_HTTP, &a), QB_OK);
    static const char *const bad[] = {"::1:9100", "[::1]9100",       "[::1",   "h:", "h:x",
                                      "9100",     "tcp:127.0.0.1:1", "h:99999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (qb_address_parse(bad[i], QB_ADDRESS_HTTP, &a) != QB_EINVAL)
            fail_msg("'%s' accepted as an HTTP listen address", bad[i]);
}

static void test_unix_absolute(void **state)
{
    struct qb_address a;

    (void)state;
    assert_int_equal(qb_address_parse("unix:/run/l.sock", QB_ADDRESS_UNIX_ABSOLUTE, &a), QB_OK);
    assert_int_equal(qb_address_parse("unix:l.sock", QB_ADDRESS_UNIX_ABSOLUTE, &a), QB_EINVAL);
    assert_int_equal(qb_address_parse("tcp:h:1", QB_ADDRESS_UNIX_ABSOLUTE, &a), QB_EINVAL);
    assert_int_equal(qb_address_parse("h:1", QB_ADDRESS_UNIX_ABSOLUTE, &a), QB_EINVAL);
}

static void test_sockaddr(void **state)
{
    struct sockaddr_storage ss;
    struct qb_address a;
    socklen_t len;
    char path[200];

    (void)state;
    assert_int_equal(qb_address_parse("tcp:localhost:4444", QB_ADDRESS_QMP, &a), QB_OK);
    assert_int_equal(qb_address_sockaddr(&a, &ss, &len), QB_OK);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 4444);
    assert_int_equal(((struct sockaddr_in *)&ss)->sin_addr.s_addr, htonl(INADDR_LOOPBACK));
    assert_int_equal(qb_address_parse("tcp:::1:4444", QB_ADDRESS_QMP, &a), QB_OK);
    assert_int_equal(qb_address_sockaddr(&a, &ss, &len), QB_OK);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(len, sizeof(struct sockaddr_in6));
    /* no name resolution */
    assert_int_equal(qb_address_parse("tcp:example.org:4444", QB_ADDRESS_QMP, &a), QB_OK);
    assert_int_equal(qb_address_sockaddr(&a, &ss, &len), QB_EINVAL);
    /* a bracketed host must be IPv6 */
    assert_int_equal(qb_address_parse("[127.0.0.1]:1", QB_ADDRESS_HTTP, &a), QB_OK);
    assert_int_equal(qb_address_sockaddr(&a, &ss, &len), QB_EINVAL);
    assert_int_equal(qb_address_parse("unix:/run/x.sock", QB_ADDRESS_QMP, &a), QB_OK);
    assert_int_equal(qb_address_sockaddr(&a, &ss, &len), QB_OK);
    assert_int_equal(ss.ss_family, AF_UNIX);
    assert_string_equal(((struct sockaddr_un *)&ss)->sun_path, "/run/x.sock");
    /* a path the kernel would cut short is refused, not truncated */
    memcpy(path, "unix:/", 6);
    memset(path + 6, 'a', sizeof(path) - 7);
    path[sizeof(path) - 1] = '\0';
    assert_int_equal(qb_address_parse(path, QB_ADDRESS_QMP, &a), QB_OK);
    assert_int_equal(qb_address_sockaddr(&a, &ss, &len), QB_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qmp_form),
        cmocka_unit_test(test_http_form),
        cmocka_unit_test(test_unix_absolute),
        cmocka_unit_test(test_sockaddr),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
