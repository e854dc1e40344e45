/*
 * test_qmp_greetings.c - shared QMP greetings (bridge/qmp_greetings.c): equal
 * greetings share one tree whatever their key order, different ones do not,
 * the tree is a copy the caller may release, and the last put frees it.
 */
#include "qmp_greetings.h"

#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static json_t *parse(const char *text)
{
    json_t *v = json_loads(text, 0, NULL);
    assert_non_null(v);
    return v;
}

#define QEMU72 "{\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": 0}, \"package\": \"Debian 1:7.2\"}"

static void equal_greetings_share_one_tree(void **state)
{
    (void)state;
    json_t *a = parse("{\"version\": " QEMU72 ", \"capabilities\": [\"oob\"]}");
    /* the same greeting with its keys in another order, as another session reads it */
    json_t *b = parse("{\"capabilities\": [\"oob\"], \"version\": {\"package\": \"Debian 1:7.2\","
                      " \"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}}");
    json_t *other = parse("{\"version\": " QEMU72 ", \"capabilities\": []}");

    struct qb_qmp_greeting *ga = qb_qmp_greeting_get(a);
    struct qb_qmp_greeting *gb = qb_qmp_greeting_get(b);
    struct qb_qmp_greeting *go = qb_qmp_greeting_get(other);
    assert_non_null(ga);
    assert_ptr_equal(ga, gb);
    assert_ptr_not_equal(ga, go);
    assert_int_equal(qb_qmp_greetings_count(), 2);

    /* a copy: the sessions' own parses can go */
    assert_ptr_not_equal(qb_qmp_greeting_tree(ga), a);
    json_decref(a);
    json_decref(b);
    json_decref(other);
    assert_true(json_is_array(json_object_get(qb_qmp_greeting_tree(ga), "capabilities")));
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(qb_qmp_greeting_tree(gb), "version"),
                                         "qemu"),
                         "minor")),
                     2);

    /* freed with its last user only */
    qb_qmp_greeting_put(ga);
    assert_int_equal(qb_qmp_greetings_count(), 2);
    assert_string_equal(json_string_value(json_array_get(
                            json_object_get(qb_qmp_greeting_tree(gb), "capabilities"), 0)),
                        "oob");
    qb_qmp_greeting_put(gb);
    assert_int_equal(qb_qmp_greetings_count(), 1);
    qb_qmp_greeting_put(go);
    assert_int_equal(qb_qmp_greetings_count(), 0);
    qb_qmp_greeting_put(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(equal_greetings_share_one_tree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
