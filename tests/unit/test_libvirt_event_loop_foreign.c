/*
 * test_libvirt_event_loop_foreign.c - installing when another event
 * implementation was registered first: libvirt keeps that one (it ignores a
 * later registration), so the install must notice and refuse. A program of
 * its own, since a registration lasts for the whole process.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "error.h"
#include "libvirt_event_loop.h"

#include <libvirt/libvirt.h>

static int foreign_add_timeout(int timeout, virEventTimeoutCallback cb, void *opaque,
                               virFreeCallback ff)
{
    (void)timeout;
    (void)cb;
    (void)opaque;
    (void)ff;
    return 4242;
}

static int foreign_remove_timeout(int timer)
{
    (void)timer;
    return 0;
}

static void test_foreign_first(void **state)
{
    uv_loop_t loop;

    (void)state;
    virEventRegisterImpl(NULL, NULL, NULL, foreign_add_timeout, NULL, foreign_remove_timeout);
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(qb_libvirt_event_loop_install(&loop), QB_EEXIST);
    assert_int_equal(qb_libvirt_event_loop_install(&loop), QB_ECLOSED);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_foreign_first),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
