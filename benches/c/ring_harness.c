/*
 * Baseline for the ring benchmark: request/response round trips over a shared ring driven by
 * Xen's own ring.h macros, the way Linux's blkfront/blkback drive them (polled: no event
 * channel, one thread plays both ends).
 *
 * Barriers as Linux defines them on x86_64: xen_mb() is a full fence, xen_rmb()/xen_wmb() are
 * compiler barriers (x86 keeps loads and stores in order).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* A current interface version, so ring.h does not map xen_mb() to a legacy mb(). */
#define __XEN_INTERFACE_VERSION__ 0x00040e00
#define xen_mb() __sync_synchronize()
#define xen_rmb() __asm__ __volatile__("" ::: "memory")
#define xen_wmb() __asm__ __volatile__("" ::: "memory")
#include <xen/io/ring.h>

/* The shapes of blkif_request / blkif_response on x86_64 (11 segments). */
struct bench_seg {
    uint32_t gref;
    uint8_t first_sect;
    uint8_t last_sect;
    uint16_t pad;
};

struct bench_req {
    uint8_t operation;
    uint8_t nr_segments;
    uint16_t handle;
    uint32_t pad;
    uint64_t id;
    uint64_t sector_number;
    struct bench_seg seg[11];
};

struct bench_rsp {
    uint64_t id;
    uint8_t operation;
    uint8_t pad0;
    int16_t status;
    uint32_t pad1;
};

_Static_assert(sizeof(struct bench_req) == 112, "blkif_request is 112 bytes");
_Static_assert(sizeof(struct bench_rsp) == 16, "blkif_response is 16 bytes");

DEFINE_RING_TYPES(bench, struct bench_req, struct bench_rsp);

_Static_assert(offsetof(struct bench_sring, ring) == 64, "sring header is 64 bytes");

/* What the back end does with its copy of a request before answering it. */
enum {
    WORK_ID = 0,       /* answer with its id: GCC then loads only id and operation (9 bytes)
                          out of RING_COPY_REQUEST's volatile struct copy */
    WORK_VALIDATE = 1, /* hand the copy to bench_validate() (out of line, shared with the Rust
                          harness), as a backend hands requests on: every byte is read */
};

struct ends {
    const struct bench_req *tmpl; /* what every request looks like (plus its id) */
    int work;           /* what the back end does with its copy: WORK_* */
    bench_front_ring_t front;
    bench_back_ring_t back;
    uint64_t next_id;   /* id of the next request */
    uint64_t expect_id; /* id of the next response */
    uint64_t notifies;
};

/*
 * Front end: write one request in place: a copy of the caller's template (runtime data, so
 * that both compilers emit a plain 112-byte copy rather than their own constant-store
 * sequences) with the per-request fields set. Every byte of the entry is written, as the Rust
 * side writes whole entries.
 */
static inline void fill_request(struct bench_req *r, const struct bench_req *tmpl, uint64_t id)
{
    *r = *tmpl;
    r->operation = (uint8_t)(id & 1);
    r->id = id;
    r->sector_number = id * 88;
}

/* Front end: write up to `k` requests, push and check notify. */
static inline void front_push(struct ends *e, unsigned long k)
{
    int notify;
    while (k-- && !RING_FULL(&e->front)) {
        fill_request(RING_GET_REQUEST(&e->front, e->front.req_prod_pvt), e->tmpl, e->next_id++);
        e->front.req_prod_pvt++;
    }
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&e->front, notify);
    e->notifies += notify;
}

/*
 * Back end: blkback's per-request checks on every field. Out of line and called by both
 * harnesses (noipa: the C loop may not inline or specialise it either), so the two pay exactly
 * the same for it, and both must materialise the whole copy to pass it.
 */
__attribute__((noipa)) int16_t bench_validate(const struct bench_req *req)
{
    int ok = (req->nr_segments == 11) & (req->handle == 0x51) & (req->operation <= 1) &
             (req->sector_number == req->id * 88);
    for (unsigned int i = 0; i < 11; i++)
        ok &= (req->seg[i].first_sect <= req->seg[i].last_sect) & (req->seg[i].last_sect <= 7) &
              (req->seg[i].gref != 0xffffffffu);
    return ok ? 0 : -1;
}

/* Back end: serve every request (blkback's loop), then final check; 0 or -1 (bad front). */
static inline int back_serve(struct ends *e)
{
    bench_back_ring_t *b = &e->back;
    int more, notify;
    do {
        RING_IDX rc = b->req_cons;
        RING_IDX rp = b->sring->req_prod;
        xen_rmb();
        if (RING_REQUEST_PROD_OVERFLOW(b, rp))
            return -1;
        while (rc != rp) {
            struct bench_req req;
            struct bench_rsp *rsp;
            if (RING_REQUEST_CONS_OVERFLOW(b, rc))
                break;
            RING_COPY_REQUEST(b, rc, &req);
            b->req_cons = ++rc;
            rsp = RING_GET_RESPONSE(b, b->rsp_prod_pvt);
            rsp->id = req.id;
            rsp->operation = req.operation;
            rsp->pad0 = 0;
            rsp->status = e->work == WORK_VALIDATE ? bench_validate(&req) : 0;
            rsp->pad1 = 0;
            b->rsp_prod_pvt++;
        }
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(b, notify);
        e->notifies += notify;
        RING_FINAL_CHECK_FOR_REQUESTS(b, more);
    } while (more);
    return 0;
}

/* Front end: consume every response (blkfront's loop), then final check; 0 or -1. */
static inline int front_consume(struct ends *e)
{
    bench_front_ring_t *f = &e->front;
    int more;
    do {
        RING_IDX rc = f->rsp_cons;
        RING_IDX rp = f->sring->rsp_prod;
        xen_rmb();
        if (RING_RESPONSE_PROD_OVERFLOW(f, rp))
            return -1;
        for (; rc != rp; rc++) {
            struct bench_rsp rsp;
            RING_COPY_RESPONSE(f, rc, &rsp);
            if (rsp.id != e->expect_id || rsp.status != 0)
                return -1;
            e->expect_id++;
        }
        f->rsp_cons = rc;
        RING_FINAL_CHECK_FOR_RESPONSES(f, more);
    } while (more);
    return 0;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * n round trips in batches of `batch` requests over the shared ring at `front_view` (the front
 * end's address) / `back_view` (the back end's mapping of the same pages), `bytes` long.
 * `work` (WORK_*) says what the back end does with each request before answering. Requests are
 * copies of `tmpl` (a struct bench_req) with operation, id and sector_number set.
 * Returns the elapsed nanoseconds, or -1 on a protocol error. *notifies receives the number of
 * notifications the check-notify macros asked for.
 */
int64_t c_ring_run(void *front_view, void *back_view, size_t bytes, uint64_t n,
                   unsigned long batch, const void *tmpl, int work, uint64_t *notifies)
{
    struct ends e;
    uint64_t t0, t1;

    memset(&e, 0, sizeof(e));
    e.tmpl = tmpl;
    e.work = work;
    SHARED_RING_INIT((struct bench_sring *)front_view);
    FRONT_RING_INIT(&e.front, (struct bench_sring *)front_view, bytes);
    BACK_RING_INIT(&e.back, (struct bench_sring *)back_view, bytes);

    t0 = now_ns();
    while (e.expect_id < n) {
        uint64_t left = n - e.next_id;
        front_push(&e, batch < left ? batch : left);
        if (back_serve(&e) != 0 || front_consume(&e) != 0)
            return -1;
    }
    t1 = now_ns();
    *notifies = e.notifies;
    return (int64_t)(t1 - t0);
}

/* RING_SIZE for this entry type in `bytes` (__CONST_RING_SIZE), to check the Rust side. */
unsigned int c_ring_size(size_t bytes)
{
    return __CONST_RING_SIZE(bench, bytes);
}
