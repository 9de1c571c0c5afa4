/*
 * ksm-workload: /init of the fixture guests. It creates KSM state of known
 * shape, stops ksmd, prints the kernel's own counters as JSON on the console
 * (the truth the tests compare with) and waits for the host to dump memory.
 *
 * Parameters come from the kernel command line as ksmw.NAME=VALUE:
 *   sharers        processes sharing pages (default 4)
 *   shared         pages of common content in each sharer (32)
 *   chain          copies of one page in each sharer: sharers*chain copies
 *                  beyond max_page_sharing make a chain of dups (3)
 *   cow            pages each sharer shares, that sharer 0 writes after merging (8)
 *   unique         pages of unique content in each sharer: unstable items (48)
 *   volatile       pages rewritten continuously by one process (16)
 *   zero           zero-filled pages in one process (0)
 *   exit           1: a process merges, then exits before the dump (1)
 *   pairs          pages in two regions of one process, pairwise equal; after
 *                  merging all are written, and ksmd is single-stepped until
 *                  every pair has left the stable tree (needs pages_scanned) (0)
 *   numa           bind sharer i to node i % numa (0: no binding)
 *   max_page_sharing, merge_across_nodes, use_zero_pages, pages_to_scan,
 *   sleep_millisecs, smart_scan: written to /sys/kernel/mm/ksm before run=1
 *   sparse         1: pages differ only in their first and last words (fast
 *                  to fill under TCG: the benchmark dumps)
 *   same           1: every shared page holds one content (with a high
 *                  max_page_sharing, millions of items in little memory)
 *   batch          pages: ksmd runs while the sharers fill their shared
 *                  pages this many at a time, each sharer waiting for each
 *                  batch to merge before the next, so that memory stays
 *                  small however many pages there are (0: fill, then merge)
 *   live           1: a background workload on a running system (the live
 *                  test): ksmd keeps running, nothing is single-stepped, the
 *                  truth is printed once merging has settled
 *   explain        1: one more process, ksm-explain0, whose memory is merged
 *                  for some reasons and not merged for others (the fixture of
 *                  `ksminspect explain`). One mergeable VMA holds, in
 *                  ascending addresses, explain_pages pages each of: content
 *                  equal to the sharers' first shared pages (merged), unique
 *                  content (unstable: where smart_scan skips a page, it leaves
 *                  the tree), content rewritten continuously until
 *                  the truth is recorded (volatile), then unique content
 *                  touched only after merging settled, ksmd stopped (run=0)
 *                  part way through it by single-stepping, so that its first
 *                  half has rmap_items (seen once: a checksum, no tree) and
 *                  the rest none (never scanned). Beside it:
 *                  an anonymous VMA of the same shared content, touched but
 *                  never madvised MERGEABLE, and a MAP_HUGETLB VMA of hugetlb
 *                  huge pages (reserved through /proc/sys/vm/nr_hugepages;
 *                  madvise(MADV_MERGEABLE) is called on it and ignored by the
 *                  kernel). Needs HUGETLBFS and sharers, shared >= explain_pages.
 *                  The truth gets the regions, the VMAs (from smaps) and the
 *                  scan counters before and after the single-stepping (0)
 *   explain_pages  pages in each 4K region of the explain process (16)
 *   hugetlb        huge pages in the explain process's MAP_HUGETLB VMA (2)
 *   thp            transparent huge pages (PMD-sized: 2 MB on x86_64) in one
 *                  more VMA of the explain process, below all its others (so
 *                  that ksmd scans it before the one it is stopped in): mapped
 *                  2 MB-aligned, madvised MADV_HUGEPAGE and MADV_MERGEABLE,
 *                  every base page of unique content written before merging
 *                  starts (nothing merges, the THPs stay whole, their pages
 *                  get rmap_items in the unstable tree like the unique
 *                  region's). THP is switched on first (enabled=always;
 *                  defrag=madvise if it was never). The truth gets the region
 *                  ("thp": pages in base pages, page_size the THP size,
 *                  count), AnonHugePages in the VMAs' smaps_kb, and "thp":
 *                  the sysfs settings (sysfs false: a kernel without THP),
 *                  the madvise results, /proc/vmstat's thp_* counters (null
 *                  without VM_EVENT_COUNTERS) and /proc/meminfo's
 *                  AnonHugePages. Needs explain (0)
 *   cgroups        1: cgroup2 mounted on /sys/fs/cgroup with +memory in its
 *                  subtree_control, two memory cgroups vm-a and vm-b; sharer i
 *                  joins vm-a (even i) or vm-b (odd i), the explain process
 *                  vm-b, each before it faults any memory; other processes stay
 *                  in the root. The truth gets each process's cgroup and each
 *                  cgroup's memory.current, memory.stat and pids (0)
 *   With explain or cgroups, each process's truth also gets its cgroup
 *   (/proc/PID/cgroup) and its RSS lines of /proc/PID/status.
 *   rmapwalk       N: the fixture of rmap_walk_ksm()'s VMA lookup (sharers,
 *                  volatile and exit default to 0 with it). Two processes:
 *                  ksm-mover0 with three mergeable regions at fixed, far apart
 *                  addresses, each of its own contents (every page distinct):
 *                  moved, N pages filled, then moved with mremap(MREMAP_FIXED)
 *                  before KSM sees them (its VMA keeps the vm_pgoff of where
 *                  it was mapped); split, 2N pages, merged, then mprotect
 *                  (PROT_READ) on its second half (a VMA split: the second
 *                  half's vm_pgoff is the first's + N); plain, N pages. And
 *                  ksm-rwshare0, one plain region with the same contents, so
 *                  that every mover page is a KSM page mapped twice. With 2
 *                  NUMA nodes both bind to node 0. ksmd runs until every page
 *                  of both is merged, the split is made, two more full scans,
 *                  then run=0. The truth gets "rmapwalk": the regions (start,
 *                  pages, split point, the vm_pgoff the mover's calls gave
 *                  them, the node and PFN of each page, the sharer's PFNs),
 *                  the VMAs of both (smaps; /proc/PID/maps's offset column is
 *                  0 for anonymous VMAs) and the counters when merged and
 *                  after the split. After the dump (the host's word: a 'g' on
 *                  /dev/ttyS1, see make-dump.py), each region's pages are
 *                  migrated to node 1 with one move_pages(2) call per region,
 *                  MPOL_MF_MOVE_ALL (do_pages_move stops at the first batch
 *                  with a page it could not migrate), and the kernel's verdict
 *                  is printed between KSMINSPECT-AFTER-BEGIN and -END: each
 *                  call's return value and status array, where every page (and
 *                  the sharer's copy) is afterwards. A KSM page that stays
 *                  behind is one whose reverse map missed a mapping. N at most
 *                  16384 (0)
 *   capture        makedumpfile's options, commas for spaces ("-c,-d,31"): a
 *                  crash-kernel capture, as a distribution takes one. At start
 *                  /capture/kexec -p loads /capture/vmlinuz with
 *                  /capture/initrd.img (whose /init runs makedumpfile with
 *                  these options) and both files are removed; 10 s after
 *                  the truth is printed (QEMU's dumps of the same state are
 *                  taken meanwhile), the kernel is crashed through
 *                  /proc/sysrq-trigger.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* The kernel's page size (4K, or 16K/64K on arm64), from the auxv. */
static unsigned long g_page_size;
#define PAGE g_page_size
#define KSM "/sys/kernel/mm/ksm/"

static char cmdline[4096];

static long param(const char *name, long def)
{
	char key[64];
	const char *p;

	snprintf(key, sizeof(key), "ksmw.%s=", name);
	for (p = cmdline; (p = strstr(p, key)); p++)
		if (p == cmdline || p[-1] == ' ')
			return strtol(p + strlen(key), NULL, 0);
	return def;
}

static void say(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	printf("ksmw: ");
	vprintf(fmt, ap);
	printf("\n");
	fflush(stdout);
	va_end(ap);
}

static int read_text(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	while (n > 0 && buf[n - 1] == '\n')
		buf[--n] = 0;
	return 0;
}

static long read_long(const char *path)
{
	char buf[64];

	return read_text(path, buf, sizeof(buf)) ? -1 : strtol(buf, NULL, 0);
}

static int write_ksm(const char *name, long value)
{
	char path[128], buf[32];
	int fd, n, ret = 0;

	snprintf(path, sizeof(path), KSM "%s", name);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	n = snprintf(buf, sizeof(buf), "%ld", value);
	if (write(fd, buf, n) != n) {
		say("write %s=%ld: %s", name, value, strerror(errno));
		ret = -1;
	}
	close(fd);
	return ret;
}

static long ksm_counter(const char *name)
{
	char path[128];

	snprintf(path, sizeof(path), KSM "%s", name);
	return read_long(path);
}

static void msleep(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static long g_sparse;

/* Fill a page with bytes that depend only on id: equal ids, equal pages. */
static void fill(unsigned char *page, uint64_t id)
{
	uint64_t x = id * 0x9E3779B97F4A7C15ULL + 1;
	size_t i;

	if (g_sparse) {
		memcpy(page, &x, 8);
		memcpy(page + PAGE - 8, &id, 8);
		return;
	}
	for (i = 0; i < PAGE; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(page + i, &x, 8);
	}
}

static unsigned char *map_pages(long n)
{
	unsigned char *p;

	if (n <= 0)
		return NULL;
	p = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		say("mmap: %s", strerror(errno));
		exit(1);
	}
	return p;
}

static void mergeable(void *p, long n)
{
	if (n > 0 && madvise(p, n * PAGE, MADV_MERGEABLE))
		say("madvise(MADV_MERGEABLE): %s", strerror(errno));
}

/* Content ids of the page groups. */
#define ID_SHARED (1ULL << 24)
#define ID_COW (2ULL << 24)
#define ID_CHAIN (3ULL << 24)
#define ID_PAIRS (4ULL << 24)
#define ID_VOLATILE (5ULL << 24)
#define ID_WRITTEN (6ULL << 24)
#define ID_EXPLAIN (7ULL << 24)	/* + page: the explain process's unique pages */
#define ID_UNIQUE (1ULL << 32)	/* + (sharer << 24) + page */

struct child {
	pid_t pid;
	int cmd;		/* write end: commands to the child */
	int ack;		/* read end: the child's answers */
	char role[16];
	long index;
	char cgroup[32];	/* "": stays in the parent's cgroup */
};

static struct child children[64];
static int nchildren;

static void child_wait(int cmd, int ack, void (*on_command)(char), int busy)
{
	char c;

	if (write(ack, "r", 1) != 1)
		exit(1);
	for (;;) {
		if (busy) {
			/* volatile: keep changing until told otherwise */
			if (read(cmd, &c, 1) != 1) {
				on_command(0);
				continue;
			}
		} else if (read(cmd, &c, 1) != 1) {
			exit(0);
		}
		if (c == 'x')
			exit(0);
		on_command(c);
		if (c == 's') {
			busy = 0;
			fcntl(cmd, F_SETFL, 0);
		}
		if (write(ack, "d", 1) != 1)
			exit(1);
	}
}

static unsigned char *g_cow, *g_pairs, *g_volatile;
static long g_ncow, g_npairs, g_nvolatile, g_index;

static void sharer_command(char c)
{
	long j;

	if (c == 'w' && g_index == 0)
		for (j = 0; j < g_ncow; j++)
			fill(g_cow + j * PAGE, ID_WRITTEN + j);
}

static void pairs_command(char c)
{
	long j;

	if (c == 'w')
		for (j = 0; j < 2 * g_npairs; j++)
			g_pairs[j * PAGE + 8] ^= 0xff;
}

static void volatile_command(char c)
{
	static uint64_t n;
	long j;

	if (c)
		return;
	for (j = 0; j < g_nvolatile; j++)
		memcpy(g_volatile + j * PAGE, &n, sizeof(n));
	n++;
	msleep(2);
}

static void bind_node(long node)
{
	unsigned long mask = 1UL << node;

	/* MPOL_BIND == 2 */
	if (syscall(SYS_set_mempolicy, 2, &mask, 64))
		say("set_mempolicy(node %ld): %s", node, strerror(errno));
}

#define CGROUP_ROOT "/sys/fs/cgroup"

static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	int n = strlen(text), ret = 0;

	if (fd < 0) {
		int err = errno;

		say("open %s: %s", path, strerror(err));
		errno = err;
		return -1;
	}
	if (write(fd, text, n) != n) {
		int err = errno;

		say("write %s to %s: %s", text, path, strerror(err));
		errno = err;	/* the caller's to record */
		ret = -1;
	}
	close(fd);
	return ret;
}

/* cgroup: a path under CGROUP_ROOT ("/vm-a"), or NULL: the parent's cgroup. */
static void spawn_in(const char *role, long index, void (*body)(int, int),
		     const char *cgroup)
{
	int cmd[2], ack[2];
	struct child *ch = &children[nchildren++];

	if (pipe(cmd) || pipe(ack))
		exit(1);
	snprintf(ch->cgroup, sizeof(ch->cgroup), "%s", cgroup ? cgroup : "");
	ch->pid = fork();
	if (ch->pid == 0) {
		char comm[16];

		close(cmd[1]);
		close(ack[0]);
		snprintf(comm, sizeof(comm), "ksm-%s%ld", role, index);
		prctl(PR_SET_NAME, comm);
		if (ch->cgroup[0]) {
			/* join before any memory of the body is faulted in */
			char path[96], pid[16];

			snprintf(path, sizeof(path), CGROUP_ROOT "%s/cgroup.procs", ch->cgroup);
			snprintf(pid, sizeof(pid), "%d", getpid());
			write_text(path, pid);
		}
		body(cmd[0], ack[1]);
		exit(0);
	}
	close(cmd[0]);
	close(ack[1]);
	ch->cmd = cmd[1];
	ch->ack = ack[0];
	ch->index = index;
	snprintf(ch->role, sizeof(ch->role), "%s", role);
	if (read(ch->ack, &(char){0}, 1) != 1)
		say("%s%ld did not start", role, index);
}

static void spawn(const char *role, long index, void (*body)(int, int))
{
	spawn_in(role, index, body, NULL);
}

static void command(struct child *ch, char c)
{
	if (write(ch->cmd, &c, 1) != 1 || read(ch->ack, &c, 1) != 1)
		say("%s%ld did not answer", ch->role, ch->index);
}

static long g_sharers, g_shared, g_chain, g_unique, g_numa, g_same, g_batch;
static long proc_long(pid_t pid, const char *file);

/* Fill the shared pages; with a batch size, wait for each batch to merge. */
static void fill_shared(unsigned char *shared)
{
	long j, waited;

	for (j = 0; j < g_shared; j++) {
		fill(shared + j * PAGE, ID_SHARED + (g_same ? 0 : j));
		if (g_batch <= 0 || (j + 1) % g_batch)
			continue;
		for (waited = 0; waited < 120000; waited += 50) {
			if (proc_long(getpid(), "ksm_merging_pages") >= j + 1 - g_batch)
				break;
			msleep(50);
		}
	}
}

static void sharer_body(int cmd, int ack)
{
	unsigned char *shared, *chain, *unique;
	long j, n;

	if (g_numa)
		bind_node(g_index % g_numa);
	n = g_shared + g_chain + g_ncow + g_unique;
	shared = map_pages(n);
	chain = shared + g_shared * PAGE;
	g_cow = chain + g_chain * PAGE;
	unique = g_cow + g_ncow * PAGE;
	if (g_batch > 0)
		mergeable(shared, n);
	fill_shared(shared);
	for (j = 0; j < g_chain; j++)
		fill(chain + j * PAGE, ID_CHAIN);
	for (j = 0; j < g_ncow; j++)
		fill(g_cow + j * PAGE, ID_COW + j);
	for (j = 0; j < g_unique; j++)
		fill(unique + j * PAGE, ID_UNIQUE + ((uint64_t)g_index << 24) + j);
	if (g_batch <= 0)
		mergeable(shared, n);
	child_wait(cmd, ack, sharer_command, 0);
}

static void exiter_body(int cmd, int ack)
{
	unsigned char *p = map_pages(g_shared);
	long j;

	for (j = 0; j < g_shared; j++)
		fill(p + j * PAGE, ID_SHARED + j);
	mergeable(p, g_shared);
	child_wait(cmd, ack, sharer_command, 0);
}

static void volatile_body(int cmd, int ack)
{
	g_volatile = map_pages(g_nvolatile);
	for (long j = 0; j < g_nvolatile; j++)
		fill(g_volatile + j * PAGE, ID_VOLATILE + j);
	mergeable(g_volatile, g_nvolatile);
	fcntl(cmd, F_SETFL, O_NONBLOCK);
	child_wait(cmd, ack, volatile_command, 1);
}

static long g_zero;

static void zero_body(int cmd, int ack)
{
	unsigned char *p = map_pages(g_zero);

	for (long j = 0; j < g_zero; j++) {
		p[j * PAGE] = 1;	/* a real anonymous page ... */
		p[j * PAGE] = 0;	/* ... that holds only zeros */
	}
	mergeable(p, g_zero);
	child_wait(cmd, ack, sharer_command, 0);
}

static void pairs_body(int cmd, int ack)
{
	long j;

	g_pairs = map_pages(2 * g_npairs);
	for (j = 0; j < g_npairs; j++) {
		fill(g_pairs + j * PAGE, ID_PAIRS + j);
		fill(g_pairs + (g_npairs + j) * PAGE, ID_PAIRS + j);
	}
	mergeable(g_pairs, 2 * g_npairs);
	child_wait(cmd, ack, pairs_command, 0);
}

/*
 * The explain process. Its regions: four in one mergeable VMA, in ascending
 * addresses (the order ksmd scans them in); beside it an anonymous VMA never
 * madvised, and a MAP_HUGETLB VMA; with ksmw.thp, a mergeable VMA of
 * transparent huge pages below them all.
 */
enum { R_MERGED, R_UNIQUE, R_VOLATILE, R_UNSCANNED, R_UNMERGEABLE, R_HUGETLB, R_THP, R_COUNT };
static const char *const region_names[R_COUNT] = {
	"merged", "unique", "volatile", "unscanned", "unmergeable", "hugetlb", "thp",
};

struct explain_info {
	unsigned long start[R_COUNT];
	long pages[R_COUNT];		/* hugetlb: huge pages; thp: base pages */
	long huge_page_size;		/* bytes; set by the parent before the fork */
	int hugetlb_mmap_errno;		/* 0: mapped */
	int hugetlb_madvise_errno;	/* madvise(MADV_MERGEABLE) on it: 0 or errno */
	long thp_size;			/* bytes (hpage_pmd_size); set by the parent */
	long thp_count;			/* THPs in the thp region */
	int thp_mmap_errno;
	int thp_madvise_hugepage_errno;
	int thp_madvise_mergeable_errno;
};

static struct explain_info g_explain;
static long g_explain_pages, g_nhugetlb, g_nthp;
static int g_explain_ack;

static void explain_command(char c)
{
	long j;

	if (c == 0) {		/* busy: rewrite the volatile region */
		volatile_command(0);
	} else if (c == 'f') {	/* fault in the region ksmd has not seen yet */
		for (j = 0; j < g_explain.pages[R_UNSCANNED]; j++)
			fill((unsigned char *)g_explain.start[R_UNSCANNED] + j * PAGE,
			     ID_EXPLAIN + 2 * g_explain.pages[R_UNSCANNED] + j);
	} else if (c == 'i') {	/* the regions, to the parent */
		if (write(g_explain_ack, &g_explain, sizeof(g_explain)) != sizeof(g_explain))
			exit(1);
	}
}

/*
 * The THP region: below every other region of the process (ksmd scans an
 * mm's VMAs in ascending addresses, so it is behind the cursor when ksmd
 * is stopped in R_UNSCANNED), aligned to the THP size, each base page of
 * unique content (written here, before ksmd runs: no merge, no split).
 */
static void map_thp(struct explain_info *e)
{
	unsigned long hs = e->thp_size, len = g_nthp * hs, low = ~0UL, hint, a, r;
	unsigned char *m;
	long j;
	int i;

	for (i = 0; i < R_COUNT; i++)
		if (e->pages[i] && e->start[i] < low)
			low = e->start[i];
	/* a hint, 2 MB more than needed: the start is aligned below */
	hint = low > 2 * (len + hs) ? ((low - len - hs) & ~(hs - 1)) - hs : 0;
	m = mmap((void *)hint, len + hs, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		e->thp_mmap_errno = errno;
		say("mmap(thp): %s", strerror(errno));
		return;
	}
	r = (unsigned long)m;
	a = (r + hs - 1) & ~(hs - 1);
	if (a > r)
		munmap(m, a - r);
	if (r + len + hs > a + len)
		munmap((void *)(a + len), r + len + hs - (a + len));
	e->thp_madvise_hugepage_errno = madvise((void *)a, len, MADV_HUGEPAGE) ? errno : 0;
	if (e->thp_madvise_hugepage_errno)
		say("madvise(MADV_HUGEPAGE): %s", strerror(e->thp_madvise_hugepage_errno));
	for (j = 0; j < (long)(len / PAGE); j++)
		fill((unsigned char *)a + j * PAGE, ID_EXPLAIN + (2 << 20) + j);
	e->thp_madvise_mergeable_errno = madvise((void *)a, len, MADV_MERGEABLE) ? errno : 0;
	if (e->thp_madvise_mergeable_errno)
		say("madvise(MADV_MERGEABLE) on thp: %s", strerror(e->thp_madvise_mergeable_errno));
	e->start[R_THP] = a;
	e->pages[R_THP] = len / PAGE;
	e->thp_count = g_nthp;
	if (a + len > low)
		say("thp region 0x%lx-0x%lx is not below the other regions (0x%lx)",
		    a, a + len, low);
}

static void explain_body(int cmd, int ack)
{
	struct explain_info *e = &g_explain;
	long n = g_explain_pages, j;
	unsigned char *p, *q;

	if (g_nhugetlb > 0 && e->huge_page_size > 0) {
		size_t len = g_nhugetlb * e->huge_page_size;

		q = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (q == MAP_FAILED) {
			e->hugetlb_mmap_errno = errno;
			say("mmap(MAP_HUGETLB): %s", strerror(errno));
		} else {
			for (j = 0; j < (long)(len / PAGE); j++) {
				uint64_t id = ID_EXPLAIN + (1 << 20) + j;

				memcpy(q + j * PAGE, &id, sizeof(id));
			}
			/* KSM does not take hugetlb VMAs: the kernel ignores this */
			e->hugetlb_madvise_errno = madvise(q, len, MADV_MERGEABLE) ? errno : 0;
			e->start[R_HUGETLB] = (unsigned long)q;
			e->pages[R_HUGETLB] = g_nhugetlb;
		}
	}
	p = map_pages(4 * n);
	for (j = R_MERGED; j <= R_UNSCANNED; j++) {
		e->start[j] = (unsigned long)(p + j * n * PAGE);
		e->pages[j] = n;
	}
	for (j = 0; j < n; j++) {
		fill((unsigned char *)e->start[R_MERGED] + j * PAGE, ID_SHARED + j);
		fill((unsigned char *)e->start[R_UNIQUE] + j * PAGE, ID_EXPLAIN + j);
		fill((unsigned char *)e->start[R_VOLATILE] + j * PAGE, ID_EXPLAIN + n + j);
	}
	/* R_UNSCANNED: not touched until ksmd is stopped ('f') */
	mergeable(p, 4 * n);
	q = map_pages(n);	/* never madvised: the sharers' content, unmerged */
	for (j = 0; j < n; j++)
		fill(q + j * PAGE, ID_SHARED + j);
	e->start[R_UNMERGEABLE] = (unsigned long)q;
	e->pages[R_UNMERGEABLE] = n;
	if (g_nthp > 0)
		map_thp(e);
	g_volatile = (unsigned char *)e->start[R_VOLATILE];
	g_nvolatile = n;
	g_explain_ack = ack;
	fcntl(cmd, F_SETFL, O_NONBLOCK);
	child_wait(cmd, ack, explain_command, 1);
}

/* The explain process's regions, as it mapped them. */
static void explain_info(struct child *ch, struct explain_info *e)
{
	char c = 'i';
	size_t got = 0;
	ssize_t n;

	if (write(ch->cmd, &c, 1) != 1)
		exit(1);
	while (got < sizeof(*e) && (n = read(ch->ack, (char *)e + got, sizeof(*e) - got)) > 0)
		got += n;
	if (got != sizeof(*e) || read(ch->ack, &c, 1) != 1)
		say("explain0 did not answer");
}

/* Wait for `scans` more full scans; -1 on timeout. */
static int wait_full_scans(long scans, long timeout_s)
{
	long target = ksm_counter("full_scans") + scans;
	time_t end = time(NULL) + timeout_s;

	while (ksm_counter("full_scans") < target) {
		if (time(NULL) > end)
			return -1;
		msleep(20);
	}
	return 0;
}

static long proc_long(pid_t pid, const char *file)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/%s", pid, file);
	return read_long(path);
}

/* Single-step ksmd (one page per wake) until the pairs process has no merged page. */
static long step_until_pairs_unmerged(struct child *pairs)
{
	long steps = 0, sleep_ms = 60000, scanned;

	write_ksm("pages_to_scan", 1);
	write_ksm("sleep_millisecs", sleep_ms);
	scanned = ksm_counter("pages_scanned");
	write_ksm("run", 1);
	while (proc_long(pairs->pid, "ksm_merging_pages") > 0 && steps < 1000000) {
		time_t end = time(NULL) + 5;

		while (ksm_counter("pages_scanned") == scanned && time(NULL) < end)
			usleep(200);
		scanned = ksm_counter("pages_scanned");
		if (proc_long(pairs->pid, "ksm_merging_pages") <= 0)
			break;
		/* a new sleep time wakes ksmd for one more batch */
		sleep_ms = sleep_ms == 60000 ? 60001 : 60000;
		write_ksm("sleep_millisecs", sleep_ms);
		steps++;
	}
	write_ksm("run", 0);
	return steps;
}

/* A whole procfs or cgroupfs file (several reads); -1 if unreadable. */
static int read_all(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	size_t got = 0;
	ssize_t n;

	if (fd < 0)
		return -1;
	while (got < len - 1 && (n = read(fd, buf + got, len - 1 - got)) > 0)
		got += n;
	close(fd);
	buf[got] = 0;
	return 0;
}

/* The number after "KEY" (then ':' or ' ') on a line of a text; -1 if none. */
static long field_long(const char *text, const char *key)
{
	size_t k = strlen(key);
	const char *p;

	for (p = text; p && *p; ) {
		if (!strncmp(p, key, k) && (p[k] == ':' || p[k] == ' '))
			return strtol(p + k + 1, NULL, 10);
		p = strchr(p, '\n');
		if (p)
			p++;
	}
	return -1;
}

static long ksm_stat_long(pid_t pid, const char *key)
{
	char path[64], buf[512];

	snprintf(path, sizeof(path), "/proc/%d/ksm_stat", pid);
	return read_all(path, buf, sizeof(buf)) ? -1 : field_long(buf, key);
}

/* How ksmd was stopped part way through the explain process's last region. */
struct explain_scan {
	long rmap_items_before, rmap_items_target, rmap_items_after;
	long full_scans_before, full_scans_after;
	long pages_scanned_before, pages_scanned_after;
	long steps;
};

/*
 * Fault in the explain process's unscanned region while ksmd is stopped,
 * then single-step ksmd (one page per wake) until half of that region has
 * rmap_items, and stop it there (run=0): a full scan left unfinished.
 */
static void step_into_unscanned(struct child *ch, struct explain_scan *sc)
{
	long sleep_ms = 60000, scanned, scans;

	write_ksm("run", 0);
	sc->rmap_items_before = ksm_stat_long(ch->pid, "ksm_rmap_items");
	sc->full_scans_before = ksm_counter("full_scans");
	sc->pages_scanned_before = ksm_counter("pages_scanned");
	command(ch, 'f');
	sc->rmap_items_target = sc->rmap_items_before + g_explain.pages[R_UNSCANNED] / 2;
	write_ksm("pages_to_scan", 1);
	write_ksm("sleep_millisecs", sleep_ms);
	scanned = sc->pages_scanned_before;
	scans = sc->full_scans_before;
	sc->steps = 0;
	write_ksm("run", 1);
	for (;;) {
		time_t end = time(NULL) + 5;

		/* a wake scans one page, or ends a full scan */
		while (ksm_counter("pages_scanned") == scanned &&
		       ksm_counter("full_scans") == scans && time(NULL) < end)
			usleep(200);
		scanned = ksm_counter("pages_scanned");
		scans = ksm_counter("full_scans");
		if (ksm_stat_long(ch->pid, "ksm_rmap_items") >= sc->rmap_items_target ||
		    sc->steps >= 100000)
			break;
		/* a new sleep time wakes ksmd for one more batch */
		sleep_ms = sleep_ms == 60000 ? 60001 : 60000;
		write_ksm("sleep_millisecs", sleep_ms);
		sc->steps++;
	}
	write_ksm("run", 0);
	sc->rmap_items_after = ksm_stat_long(ch->pid, "ksm_rmap_items");
	sc->full_scans_after = ksm_counter("full_scans");
	sc->pages_scanned_after = ksm_counter("pages_scanned");
	say("explain: ksmd stopped after %ld steps; rmap_items %ld -> %ld (target %ld); "
	    "full_scans %ld -> %ld", sc->steps, sc->rmap_items_before,
	    sc->rmap_items_after, sc->rmap_items_target, sc->full_scans_before,
	    sc->full_scans_after);
}

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			putchar('\\');
		if ((unsigned char)*s >= 0x20)
			putchar(*s);
	}
	putchar('"');
}

static void print_sysfs(void)
{
	DIR *d = opendir(KSM);
	struct dirent *e;
	char path[300], buf[256];
	int first = 1;

	printf("\"sysfs\": {");
	while (d && (e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), KSM "%s", e->d_name);
		if (read_text(path, buf, sizeof(buf)))
			continue;
		printf("%s\n  ", first ? "" : ",");
		json_string(e->d_name);
		printf(": ");
		json_string(buf);
		first = 0;
	}
	if (d)
		closedir(d);
	printf("}");
}

/* THP as the explain process got it: sysfs before and after, the counters. */
struct thp_setup {
	int sysfs;			/* 0: no /sys/kernel/mm/transparent_hugepage */
	char enabled_before[64], defrag_before[64];
	int enabled_write_errno, defrag_write_errno;	/* -1: not written */
};
static struct thp_setup g_thp;

#define THP_SYSFS "/sys/kernel/mm/transparent_hugepage/"

static int write_text(const char *path, const char *text);

/* THP on (enabled=always), and a defrag that lets a madvised fault compact. */
static void setup_thp(void)
{
	char buf[64];

	g_thp.enabled_write_errno = g_thp.defrag_write_errno = -1;
	g_explain.thp_size = 2 << 20;	/* x86_64's PMD; hpage_pmd_size says */
	g_thp.sysfs = !access(THP_SYSFS "enabled", F_OK);
	if (!g_thp.sysfs) {
		say("no " THP_SYSFS ": a kernel without THP");
		return;
	}
	read_text(THP_SYSFS "enabled", g_thp.enabled_before, sizeof(g_thp.enabled_before));
	read_text(THP_SYSFS "defrag", g_thp.defrag_before, sizeof(g_thp.defrag_before));
	g_thp.enabled_write_errno = write_text(THP_SYSFS "enabled", "always") ? errno : 0;
	/* never: a fault takes a huge page only if one is free; else compact */
	if (strstr(g_thp.defrag_before, "[never]"))
		g_thp.defrag_write_errno = write_text(THP_SYSFS "defrag", "madvise") ? errno : 0;
	if (!read_text(THP_SYSFS "hpage_pmd_size", buf, sizeof(buf)) && strtol(buf, NULL, 0) > 0)
		g_explain.thp_size = strtol(buf, NULL, 0);
}

static void print_thp(void)
{
	static const char *const vmstat_keys[] = {
		"thp_fault_alloc", "thp_fault_fallback", "thp_fault_fallback_charge",
		"thp_collapse_alloc", "thp_split_page", "thp_split_page_failed",
		"thp_split_pmd", "thp_deferred_split_page",
	};
	static char buf[1 << 14];
	char val[64];
	unsigned k;

	printf(",\n  \"thp\": {\"sysfs\": %s", g_thp.sysfs ? "true" : "false");
	if (g_thp.sysfs) {
		printf(", \"enabled_before\": ");
		json_string(g_thp.enabled_before);
		printf(", \"defrag_before\": ");
		json_string(g_thp.defrag_before);
		printf(", \"enabled_write_errno\": %d, \"defrag_write_errno\": %d",
		       g_thp.enabled_write_errno, g_thp.defrag_write_errno);
		if (!read_text(THP_SYSFS "enabled", val, sizeof(val))) {
			printf(", \"enabled\": ");
			json_string(val);
		}
		if (!read_text(THP_SYSFS "defrag", val, sizeof(val))) {
			printf(", \"defrag\": ");
			json_string(val);
		}
	}
	printf(", \"hpage_pmd_size\": %ld, \"mmap_errno\": %d, "
	       "\"madvise_hugepage_errno\": %d, \"madvise_mergeable_errno\": %d",
	       g_explain.thp_size, g_explain.thp_mmap_errno,
	       g_explain.thp_madvise_hugepage_errno, g_explain.thp_madvise_mergeable_errno);
	/* null: not in /proc/vmstat (a kernel without VM_EVENT_COUNTERS) */
	printf(", \"vmstat\": {");
	if (read_all("/proc/vmstat", buf, sizeof(buf)))
		buf[0] = 0;
	for (k = 0; k < sizeof(vmstat_keys) / sizeof(vmstat_keys[0]); k++) {
		long v = field_long(buf, vmstat_keys[k]);

		printf("%s\"%s\": ", k ? ", " : "", vmstat_keys[k]);
		if (v < 0)
			printf("null");
		else
			printf("%ld", v);
	}
	printf("}");
	if (!read_all("/proc/meminfo", buf, sizeof(buf)))
		printf(", \"meminfo_AnonHugePages_kb\": %ld", field_long(buf, "AnonHugePages"));
	printf("}");
}

static int g_extra;			/* explain or cgroups: more truth per process */
static struct child *g_explainer;
static struct explain_scan g_explain_scan;

/* The explain process: its regions, the VMAs holding them (smaps), the scan. */
static void print_explain(struct child *ch)
{
	static char smaps[1 << 16];
	static const char *const keys[] = {
		"Rss", "Anonymous", "KSM", "Private_Hugetlb", "Shared_Hugetlb",
		"AnonHugePages",	/* only with ksmw.thp */
	};
	const struct explain_scan *sc = &g_explain_scan;
	int nkeys = g_nthp > 0 ? 6 : 5;
	char path[64], *p;
	int i, k, first = 1;

	printf(", \"explain\": {\"regions\": {");
	for (i = 0; i < R_COUNT; i++) {
		long bytes = i == R_HUGETLB ? g_explain.huge_page_size : (long)PAGE;

		if (i == R_THP) {	/* only with ksmw.thp: pages in base pages */
			if (g_nthp > 0)
				printf(",\n   \"thp\": {\"start\": \"0x%lx\", \"end\": \"0x%lx\", "
				       "\"pages\": %ld, \"page_size\": %ld, \"count\": %ld}",
				       g_explain.start[i],
				       g_explain.start[i] + g_explain.pages[i] * (long)PAGE,
				       g_explain.pages[i], g_explain.thp_size,
				       g_explain.thp_count);
			continue;
		}
		printf("%s\n   \"%s\": {\"start\": \"0x%lx\", \"end\": \"0x%lx\", "
		       "\"pages\": %ld, \"page_size\": %ld}", i ? "," : "",
		       region_names[i], g_explain.start[i],
		       g_explain.start[i] + g_explain.pages[i] * bytes,
		       g_explain.pages[i], bytes);
	}
	printf("},\n  \"unscanned_pages_with_rmap_items\": %ld"
	       ", \"hugetlb_mmap_errno\": %d, \"hugetlb_madvise_mergeable_errno\": %d",
	       sc->rmap_items_after - sc->rmap_items_before,
	       g_explain.hugetlb_mmap_errno, g_explain.hugetlb_madvise_errno);
	printf(",\n  \"scan\": {\"rmap_items_before\": %ld, \"rmap_items_target\": %ld, "
	       "\"rmap_items_after\": %ld, \"full_scans_before\": %ld, "
	       "\"full_scans_after\": %ld, \"pages_scanned_before\": %ld, "
	       "\"pages_scanned_after\": %ld, \"steps\": %ld}",
	       sc->rmap_items_before, sc->rmap_items_target, sc->rmap_items_after,
	       sc->full_scans_before, sc->full_scans_after, sc->pages_scanned_before,
	       sc->pages_scanned_after, sc->steps);
	/* every VMA of smaps that holds a region: the kernel's own view */
	printf(",\n  \"vmas\": [");
	snprintf(path, sizeof(path), "/proc/%d/smaps", ch->pid);
	if (read_all(path, smaps, sizeof(smaps)))
		smaps[0] = 0;
	for (p = smaps; p && *p; ) {
		unsigned long start, end;
		char *next, *flags;

		unsigned long a, b;

		/* a VMA's block: its header line ("start-end perms ...") up to
		 * the next one (field lines, "Anonymous:", never parse so) */
		if (sscanf(p, "%lx-%lx ", &start, &end) != 2)
			break;
		for (next = strchr(p, '\n'); next; next = strchr(next + 1, '\n'))
			if (sscanf(next + 1, "%lx-%lx ", &a, &b) == 2)
				break;
		if (next)
			*next++ = 0;
		for (i = 0; i < R_COUNT; i++)
			if (g_explain.pages[i] && g_explain.start[i] >= start &&
			    g_explain.start[i] < end)
				break;
		if (i < R_COUNT) {
			printf("%s\n   {\"start\": \"0x%lx\", \"end\": \"0x%lx\", \"regions\": [",
			       first ? "" : ",", start, end);
			for (k = 0, i = 0; i < R_COUNT; i++)
				if (g_explain.pages[i] && g_explain.start[i] >= start &&
				    g_explain.start[i] < end)
					printf("%s\"%s\"", k++ ? ", " : "", region_names[i]);
			printf("], \"smaps_kb\": {");
			for (k = 0; k < nkeys; k++)
				printf("%s\"%s\": %ld", k ? ", " : "", keys[k], field_long(p, keys[k]));
			printf("}, \"VmFlags\": ");
			flags = strstr(p, "\nVmFlags:");
			if (flags) {
				char *eol;

				flags += strlen("\nVmFlags:");
				while (*flags == ' ')
					flags++;
				eol = strchr(flags, '\n');
				if (eol)
					*eol = 0;
				while (*flags && flags[strlen(flags) - 1] == ' ')
					flags[strlen(flags) - 1] = 0;
				json_string(flags);
			} else {
				printf("null");
			}
			printf("}");
			first = 0;
		}
		p = next;
	}
	printf("]");
	if (g_nthp > 0)
		print_thp();
	printf("}");
}

static void print_process(struct child *ch, int exited)
{
	char path[64], buf[4096], *line, *save;

	printf("{\"pid\": %d, \"role\": \"%s\", \"index\": %ld, \"exited\": %s",
	       ch->pid, ch->role, ch->index, exited ? "true" : "false");
	if (!exited) {
		snprintf(path, sizeof(path), "/proc/%d/comm", ch->pid);
		if (!read_text(path, buf, sizeof(buf))) {
			printf(", \"comm\": ");
			json_string(buf);
		}
		printf(", \"ksm_merging_pages\": %ld",
		       proc_long(ch->pid, "ksm_merging_pages"));
		snprintf(path, sizeof(path), "/proc/%d/ksm_stat", ch->pid);
		if (!read_text(path, buf, sizeof(buf))) {
			printf(", \"ksm_stat\": {");
			for (line = strtok_r(buf, "\n", &save); line;
			     line = strtok_r(NULL, "\n", &save)) {
				char *sp = strchr(line, ' ');

				if (!sp)
					continue;
				*sp = 0;
				printf("%s\"%s\": \"%s\"", line == buf ? "" : ", ",
				       line, sp + 1);
			}
			printf("}");
		}
	}
	if (g_extra && !exited) {
		static const char *const keys[] = {
			"VmRSS", "RssAnon", "RssFile", "RssShmem", "HugetlbPages",
		};
		int k;

		/* "0::/vm-a": cgroup v2's one line */
		snprintf(path, sizeof(path), "/proc/%d/cgroup", ch->pid);
		if (!read_text(path, buf, sizeof(buf)) && strstr(buf, "::")) {
			printf(", \"cgroup\": ");
			json_string(strstr(buf, "::") + 2);
		}
		snprintf(path, sizeof(path), "/proc/%d/status", ch->pid);
		if (!read_all(path, buf, sizeof(buf))) {
			printf(", \"status_kb\": {");
			for (k = 0; k < 5; k++)
				printf("%s\"%s\": %ld", k ? ", " : "", keys[k], field_long(buf, keys[k]));
			printf("}");
		}
	}
	if (ch == g_explainer && !exited)
		print_explain(ch);
	printf("}");
}

/* kexec -p: the capture kernel that runs when this one panics. */
static void load_capture_kernel(const char *options)
{
	char append[512];
	pid_t pid;
	int status;

	snprintf(append, sizeof(append), "--append=console=ttyS0 loglevel=1 panic=-1 "
		 "reset_devices irqpoll nr_cpus=1 nousb ksmcap.mdf=%s", options);
	pid = fork();
	if (pid == 0) {
		execl("/capture/kexec", "kexec", "-p", "/capture/vmlinuz",
		      "--initrd=/capture/initrd.img", append, (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0)
		say("kexec -p failed: no capture kernel");
	/* loaded: their pages freed (and zeroed, with init_on_free=1), so
	 * that QEMU's dumps of this guest hold one copy, not three */
	unlink("/capture/vmlinuz");
	unlink("/capture/initrd.img");
}

static const char *const cgroup_names[] = { "/vm-a", "/vm-b" };

/* cgroup2 on CGROUP_ROOT, the memory controller for its children, two of them. */
static int setup_cgroups(void)
{
	char path[64];
	unsigned i;

	if (mount("cgroup2", CGROUP_ROOT, "cgroup2", 0, NULL)) {
		say("mount cgroup2 on " CGROUP_ROOT ": %s", strerror(errno));
		return -1;
	}
	if (write_text(CGROUP_ROOT "/cgroup.subtree_control", "+memory"))
		return -1;
	for (i = 0; i < sizeof(cgroup_names) / sizeof(cgroup_names[0]); i++) {
		snprintf(path, sizeof(path), CGROUP_ROOT "%s", cgroup_names[i]);
		if (mkdir(path, 0755) && errno != EEXIST) {
			say("mkdir %s: %s", path, strerror(errno));
			return -1;
		}
	}
	return 0;
}

/* Each cgroup's pids, memory.current and memory.stat, as the kernel says. */
static void print_cgroups(void)
{
	static char buf[1 << 14];
	char path[96], *line, *save;
	unsigned i;
	int first;

	printf(",\n\"cgroups\": {");
	for (i = 0; i < sizeof(cgroup_names) / sizeof(cgroup_names[0]); i++) {
		printf("%s\n ", i ? "," : "");
		json_string(cgroup_names[i]);
		snprintf(path, sizeof(path), CGROUP_ROOT "%s/memory.current", cgroup_names[i]);
		printf(": {\"memory.current\": %ld, \"pids\": [", read_long(path));
		snprintf(path, sizeof(path), CGROUP_ROOT "%s/cgroup.procs", cgroup_names[i]);
		first = 1;
		if (!read_all(path, buf, sizeof(buf)))
			for (line = strtok_r(buf, "\n", &save); line;
			     line = strtok_r(NULL, "\n", &save), first = 0)
				printf("%s%s", first ? "" : ", ", line);
		printf("], \"memory.stat\": {");
		snprintf(path, sizeof(path), CGROUP_ROOT "%s/memory.stat", cgroup_names[i]);
		first = 1;
		if (!read_all(path, buf, sizeof(buf)))
			for (line = strtok_r(buf, "\n", &save); line;
			     line = strtok_r(NULL, "\n", &save)) {
				char *sp = strchr(line, ' ');

				if (!sp)
					continue;
				*sp = 0;
				printf("%s\n  ", first ? "" : ",");
				json_string(line);
				printf(": %s", sp + 1);
				first = 0;
			}
		printf("}}");
	}
	printf("}");
}

/* The hugetlb pool, from /proc/meminfo. */
static void print_hugetlb(void)
{
	static const char *const keys[] = {
		"HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp",
		"Hugepagesize", "Hugetlb",
	};
	static char buf[1 << 13];
	unsigned k;

	if (read_all("/proc/meminfo", buf, sizeof(buf)))
		return;
	printf(",\n\"hugetlb\": {\"nr_hugepages\": %ld",
	       read_long("/proc/sys/vm/nr_hugepages"));
	for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
		printf(", \"%s%s\": %ld", keys[k], k >= 4 ? "_kb" : "", field_long(buf, keys[k]));
	printf("}");
}

/*
 * ksmw.rmapwalk: a mover process whose mergeable regions were moved
 * (mremap), split (mprotect after merging) or neither, and a sharer holding
 * the same contents, so that every mover page is a KSM page mapped once by
 * the mover and once by the sharer. After the dump, the kernel is asked to
 * migrate each region's pages to the other node (move_pages(2),
 * MPOL_MF_MOVE_ALL): a KSM page migrates only if rmap_walk_ksm() reaches
 * both its mappings, so a page left behind is one whose reverse map missed
 * a mapping.
 */
enum { RW_MOVED, RW_SPLIT, RW_PLAIN, RW_COUNT };
static const char *const rw_names[RW_COUNT] = { "moved", "split", "plain" };

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#define MPOL_MF_MOVE_ALL_ (1 << 2)

/* Fixed, far apart addresses: no two regions' VMAs can merge. */
#if UINTPTR_MAX > 0xffffffffUL
#define RW_AT(slot) ((uintptr_t)0x600000000000ULL + (uintptr_t)(slot) * 0x10000000000ULL)
#else
#define RW_AT(slot) ((uintptr_t)0x20000000UL + (uintptr_t)(slot) * 0x08000000UL)
#endif
#define RW_AT_PLAIN RW_AT(0)
#define RW_AT_SPLIT RW_AT(1)
#define RW_AT_MOVED_FROM RW_AT(2)	/* mapped and filled here, then moved */
#define RW_AT_MOVED RW_AT(3)
#define RW_AT_SHARER RW_AT(4)		/* the sharer: moved, split, plain contents */

#define ID_RMAPWALK (8ULL << 24)	/* + (region << 20) + page */
#define RW_UNWRITTEN (-2147483647 - 1)	/* a status entry the kernel did not write */

static long g_rmapwalk;			/* N: pages of the moved and plain regions */
static int g_rw_nodes = 1, g_rw_bind = -1, g_rw_target = -1;
static int g_rw_split_errno = -1;	/* mprotect's, reported by the mover */
static int g_rw_ack;			/* the mover's answers to the parent */

struct rw_counts {
	long mover, sharer, pages_shared, pages_sharing, full_scans;
};
static struct rw_counts g_rw_settled, g_rw_after_split;
static long g_rw_wait_scans = -1;	/* full scans until every page merged */
static struct child *g_rw_mover, *g_rw_sharer;

static long rw_pages(int r)
{
	return r == RW_SPLIT ? 2 * g_rmapwalk : g_rmapwalk;
}

static uintptr_t rw_start(int r)
{
	return r == RW_MOVED ? RW_AT_MOVED : r == RW_SPLIT ? RW_AT_SPLIT : RW_AT_PLAIN;
}

/* Where region r's contents are in the sharer's one region. */
static uintptr_t rw_sharer_start(int r)
{
	return RW_AT_SHARER + (r == RW_MOVED ? 0 : r == RW_SPLIT ? g_rmapwalk : 3 * g_rmapwalk) * PAGE;
}

static unsigned page_shift(void)
{
	return __builtin_ctzl(PAGE);
}

static unsigned char *rw_map(uintptr_t at, long n)
{
	void *p = mmap((void *)at, n * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);

	if (p == MAP_FAILED || (uintptr_t)p != at) {
		say("rmapwalk: mmap at 0x%lx: %s", (unsigned long)at,
		    p == MAP_FAILED ? strerror(errno) : "another address");
		exit(1);
	}
	return p;
}

static void rw_fill(unsigned char *p, int r, long first, long n)
{
	for (long j = 0; j < n; j++)
		fill(p + j * PAGE, ID_RMAPWALK + ((uint64_t)r << 20) + first + j);
}

static void rw_mergeable(void *p, long n)
{
	/* base pages only (THP is "always" in the fixture kernels) */
	madvise(p, n * PAGE, MADV_NOHUGEPAGE);
	mergeable(p, n);
}

static void mover_command(char c)
{
	if (c != 'p')
		return;
	/* split the split region's VMA: its second half gets vm_pgoff + N */
	g_rw_split_errno = mprotect((void *)(RW_AT_SPLIT + g_rmapwalk * PAGE),
				    g_rmapwalk * PAGE, PROT_READ) ? errno : 0;
	if (g_rw_split_errno)
		say("rmapwalk: mprotect: %s", strerror(g_rw_split_errno));
	if (write(g_rw_ack, &g_rw_split_errno, sizeof(int)) != sizeof(int))
		exit(1);
}

static void mover_body(int cmd, int ack)
{
	long n = g_rmapwalk;
	unsigned char *p;
	void *q;
	int r;

	if (g_rw_bind >= 0)
		bind_node(g_rw_bind);
	/* moved: filled, then moved before KSM ever sees it */
	p = rw_map(RW_AT_MOVED_FROM, n);
	rw_fill(p, RW_MOVED, 0, n);
	q = mremap(p, n * PAGE, n * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, (void *)RW_AT_MOVED);
	if (q == MAP_FAILED || (uintptr_t)q != RW_AT_MOVED) {
		say("rmapwalk: mremap: %s", q == MAP_FAILED ? strerror(errno) : "another address");
		exit(1);
	}
	p = rw_map(RW_AT_SPLIT, 2 * n);
	rw_fill(p, RW_SPLIT, 0, 2 * n);
	p = rw_map(RW_AT_PLAIN, n);
	rw_fill(p, RW_PLAIN, 0, n);
	for (r = 0; r < RW_COUNT; r++)
		rw_mergeable((void *)rw_start(r), rw_pages(r));
	g_rw_ack = ack;
	child_wait(cmd, ack, mover_command, 0);
}

static void rw_sharer_command(char c)
{
	(void)c;
}

static void rw_sharer_body(int cmd, int ack)
{
	unsigned char *p;
	int r;

	if (g_rw_bind >= 0)
		bind_node(g_rw_bind);
	p = rw_map(RW_AT_SHARER, 4 * g_rmapwalk);
	for (r = 0; r < RW_COUNT; r++)
		rw_fill((unsigned char *)rw_sharer_start(r), r, 0, rw_pages(r));
	rw_mergeable(p, 4 * g_rmapwalk);
	child_wait(cmd, ack, rw_sharer_command, 0);
}

/* NUMA: bind both processes to node 0, migrate to node 1 after the dump. */
static void rw_setup(void)
{
	char path[64];

	while (g_rw_nodes < 64) {
		snprintf(path, sizeof(path), "/sys/devices/system/node/node%d", g_rw_nodes);
		if (access(path, F_OK))
			break;
		g_rw_nodes++;
	}
	if (g_rw_nodes >= 2) {
		g_rw_bind = 0;
		g_rw_target = 1;
	} else {
		say("rmapwalk: one NUMA node: no binding, no migration after the dump");
	}
}

static void rw_count(struct rw_counts *c)
{
	c->mover = proc_long(g_rw_mover->pid, "ksm_merging_pages");
	c->sharer = proc_long(g_rw_sharer->pid, "ksm_merging_pages");
	c->pages_shared = ksm_counter("pages_shared");
	c->pages_sharing = ksm_counter("pages_sharing");
	c->full_scans = ksm_counter("full_scans");
}

/*
 * With ksmd running: wait until every page of both processes is merged,
 * split the split region (mprotect in the mover), let ksmd scan twice more.
 */
static void rw_merge_then_split(void)
{
	long want = 4 * g_rmapwalk, scans = 0;
	char c = 'p';

	for (;;) {
		rw_count(&g_rw_settled);
		if (g_rw_settled.mover >= want && g_rw_settled.sharer >= want)
			break;
		if (scans >= 50 || wait_full_scans(1, 600)) {
			say("rmapwalk: not all merged: mover %ld, sharer %ld of %ld",
			    g_rw_settled.mover, g_rw_settled.sharer, want);
			break;
		}
		scans++;
	}
	g_rw_wait_scans = scans;
	if (write(g_rw_mover->cmd, &c, 1) != 1 ||
	    read(g_rw_mover->ack, &g_rw_split_errno, sizeof(int)) != sizeof(int) ||
	    read(g_rw_mover->ack, &c, 1) != 1)
		say("rmapwalk: the mover did not split");
	wait_full_scans(2, 600);
	rw_count(&g_rw_after_split);
	say("rmapwalk: merged mover %ld sharer %ld; after the split (errno %d) "
	    "mover %ld sharer %ld, pages_shared %ld pages_sharing %ld",
	    g_rw_settled.mover, g_rw_settled.sharer, g_rw_split_errno,
	    g_rw_after_split.mover, g_rw_after_split.sharer,
	    g_rw_after_split.pages_shared, g_rw_after_split.pages_sharing);
}

static void print_counts(const char *key, const struct rw_counts *c)
{
	printf(", \"%s\": {\"mover_ksm_merging_pages\": %ld, \"sharer_ksm_merging_pages\": %ld, "
	       "\"pages_shared\": %ld, \"pages_sharing\": %ld, \"full_scans\": %ld}",
	       key, c->mover, c->sharer, c->pages_shared, c->pages_sharing, c->full_scans);
}

/* Arrays of up to 2N entries, allocated in this mode only. */
static void *rw_alloc(size_t size)
{
	void *p = calloc(2 * g_rmapwalk, size);

	if (!p) {
		say("rmapwalk: out of memory");
		exit(1);
	}
	return p;
}

static void **rw_addrs(uintptr_t start, long n)
{
	static void **addrs;

	if (!addrs)
		addrs = rw_alloc(sizeof(*addrs));
	for (long j = 0; j < n; j++)
		addrs[j] = (void *)(start + j * PAGE);
	return addrs;
}

/* The node of each page (move_pages without nodes: only asks). */
static long rw_nodes(pid_t pid, uintptr_t start, long n, int *status)
{
	for (long j = 0; j < n; j++)
		status[j] = RW_UNWRITTEN;
	return syscall(SYS_move_pages, pid, n, rw_addrs(start, n), NULL, status, 0);
}

static void print_ints(const char *key, const int *v, long n)
{
	printf("\"%s\": [", key);
	for (long j = 0; j < n; j++) {
		if (j)
			printf(", ");
		if (v[j] == RW_UNWRITTEN)
			printf("null");
		else
			printf("%d", v[j]);
	}
	printf("]");
}

/* The PFN of each page, from /proc/PID/pagemap (0: not present). */
static void print_pfns(pid_t pid, uintptr_t start, long n)
{
	char path[64];
	uint64_t e;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	fd = open(path, O_RDONLY);
	printf("[");
	for (long j = 0; j < n; j++) {
		off_t at = (off_t)((start + j * PAGE) >> page_shift()) * 8;

		if (fd < 0 || pread(fd, &e, 8, at) != 8)
			e = 0;
		printf("%s\"0x%llx\"", j ? ", " : "",
		       (unsigned long long)((e >> 63) ? e & ((1ULL << 55) - 1) : 0));
	}
	printf("]");
	if (fd >= 0)
		close(fd);
}

/* The vm_pgoff a VMA holding these addresses has, from what the mover did. */
static unsigned long rw_vm_pgoff(pid_t pid, unsigned long start)
{
	if (pid == g_rw_mover->pid && start == RW_AT_MOVED)
		return RW_AT_MOVED_FROM >> page_shift();
	return start >> page_shift();	/* never moved; a split-off half starts there */
}

/* The VMAs of /proc/PID/smaps that hold a region of the fixture. */
static void print_rw_vmas(struct child *ch, int *first)
{
	static char smaps[1 << 16];
	static const char *const keys[] = { "Rss", "Anonymous", "KSM" };
	char path[64], *p, *next;
	unsigned long start, end, a, b;
	unsigned long long offset;
	char perms[8];
	int r, k;

	snprintf(path, sizeof(path), "/proc/%d/smaps", ch->pid);
	if (read_all(path, smaps, sizeof(smaps)))
		smaps[0] = 0;
	for (p = smaps; p && *p; p = next) {
		if (sscanf(p, "%lx-%lx %7s %llx ", &start, &end, perms, &offset) != 4)
			break;
		for (next = strchr(p, '\n'); next; next = strchr(next + 1, '\n'))
			if (sscanf(next + 1, "%lx-%lx ", &a, &b) == 2)
				break;
		if (next)
			*next++ = 0;
		for (r = 0; r < RW_COUNT; r++) {
			uintptr_t s = ch == g_rw_mover ? rw_start(r) : rw_sharer_start(r);

			if (s < end && s + rw_pages(r) * PAGE > start)
				break;
		}
		if (r == RW_COUNT)
			continue;
		printf("%s\n   {\"process\": \"%s\", \"pid\": %d, \"start\": \"0x%lx\", "
		       "\"end\": \"0x%lx\", \"pages\": %ld, \"perms\": \"%s\", "
		       "\"maps_offset\": \"0x%llx\", \"vm_pgoff\": %lu, \"regions\": [",
		       *first ? "" : ",", ch->role, ch->pid, start, end,
		       (long)((end - start) / PAGE), perms, offset, rw_vm_pgoff(ch->pid, start));
		for (k = 0, r = 0; r < RW_COUNT; r++) {
			uintptr_t s = ch == g_rw_mover ? rw_start(r) : rw_sharer_start(r);

			if (s < end && s + rw_pages(r) * PAGE > start)
				printf("%s\"%s\"", k++ ? ", " : "", rw_names[r]);
		}
		printf("], \"smaps_kb\": {");
		for (k = 0; k < 3; k++)
			printf("%s\"%s\": %ld", k ? ", " : "", keys[k], field_long(p, keys[k]));
		printf("}}");
		*first = 0;
	}
}

static void print_rmapwalk(void)
{
	int *nodes = rw_alloc(sizeof(int));
	char buf[32];
	int r, first = 1;
	long n = g_rmapwalk;

	printf(",\n\"rmapwalk\": {\"pages\": %ld, \"mover_pid\": %d, \"sharer_pid\": %d, "
	       "\"pgoff_store\": ", n, g_rw_mover->pid, g_rw_sharer->pid);
	if (read_text("/sys/module/ksm/parameters/pgoff_store", buf, sizeof(buf)))
		printf("null");
	else
		json_string(buf);
	printf(", \"numa_nodes\": %d, \"bind_node\": %d, \"target_node\": %d, "
	       "\"split_errno\": %d, \"full_scans_waited_for_merge\": %ld",
	       g_rw_nodes, g_rw_bind, g_rw_target, g_rw_split_errno, g_rw_wait_scans);
	print_counts("merged", &g_rw_settled);
	print_counts("after_split", &g_rw_after_split);
	printf(",\n \"vm_pgoff_note\": \"vm_pgoff: derived from the mover's own mmap, "
	       "mremap and mprotect calls; /proc/PID/maps shows 0 as the offset of an "
	       "anonymous VMA (maps_offset)\"");
	printf(",\n \"regions\": [");
	for (r = 0; r < RW_COUNT; r++) {
		uintptr_t s = rw_start(r);

		printf("%s\n  {\"name\": \"%s\", \"kind\": \"%s\", \"start\": \"0x%lx\", "
		       "\"end\": \"0x%lx\", \"pages\": %ld, \"content_id\": \"0x%llx\", "
		       "\"sharer_start\": \"0x%lx\"", r ? "," : "", rw_names[r], rw_names[r],
		       (unsigned long)s, (unsigned long)(s + rw_pages(r) * PAGE), rw_pages(r),
		       (unsigned long long)(ID_RMAPWALK + ((uint64_t)r << 20)),
		       (unsigned long)rw_sharer_start(r));
		if (r == RW_MOVED)
			printf(", \"mapped_at\": \"0x%lx\", \"vm_pgoff\": %lu",
			       (unsigned long)RW_AT_MOVED_FROM,
			       (unsigned long)(RW_AT_MOVED_FROM >> page_shift()));
		else if (r == RW_SPLIT)
			printf(", \"split_at\": \"0x%lx\", \"pages_before_split\": %ld, "
			       "\"pages_after_split\": %ld, \"vm_pgoff\": [%lu, %lu]",
			       (unsigned long)(s + n * PAGE), n, n,
			       (unsigned long)(s >> page_shift()),
			       (unsigned long)(s >> page_shift()) + n);
		else
			printf(", \"vm_pgoff\": %lu", (unsigned long)(s >> page_shift()));
		printf(",\n   \"move_pages_stat\": %ld, ",
		       rw_nodes(g_rw_mover->pid, s, rw_pages(r), nodes));
		print_ints("nodes", nodes, rw_pages(r));
		printf(",\n   \"pfns\": ");
		print_pfns(g_rw_mover->pid, s, rw_pages(r));
		printf(",\n   \"sharer_pfns\": ");
		print_pfns(g_rw_sharer->pid, rw_sharer_start(r), rw_pages(r));
		printf("}");
	}
	printf("],\n \"vmas\": [");
	print_rw_vmas(g_rw_mover, &first);
	print_rw_vmas(g_rw_sharer, &first);
	printf("]}");
	free(nodes);
}

/*
 * The host's word that the dump is taken: a line on the second serial port
 * (make-dump.py connects to it after the dump). Returns -1 without one.
 */
static int rw_wait_for_host(void)
{
	int fd = open("/dev/ttyS1", O_RDWR | O_NOCTTY);
	struct termios t;
	char c;

	if (fd < 0) {
		say("rmapwalk: /dev/ttyS1: %s: no word from the host", strerror(errno));
		return -1;
	}
	if (!tcgetattr(fd, &t)) {
		cfmakeraw(&t);
		tcsetattr(fd, TCSANOW, &t);
	}
	while (read(fd, &c, 1) == 1)
		if (c == 'g') {
			close(fd);
			return 0;
		}
	say("rmapwalk: /dev/ttyS1: %s", strerror(errno));
	close(fd);
	return -1;
}

/* After the dump: the kernel's verdict, one move_pages(2) call per region. */
static void rmapwalk_after_dump(void)
{
	int *status, *before, *after, *sharer, *targets;
	long n, j, ret, moved, stayed, half[2][2];
	int r, err;

	if (g_rw_target < 0 || rw_wait_for_host()) {
		/* nothing tried: the host is told so, not left waiting */
		printf("KSMINSPECT-AFTER-BEGIN\n{\"error\": \"%s\"}\nKSMINSPECT-AFTER-END\n",
		       g_rw_target < 0 ? "one NUMA node: no migration" : "no word from the host");
		fflush(stdout);
		return;
	}
	say("rmapwalk: the host took the dump; migrating each region to node %d", g_rw_target);
	status = rw_alloc(sizeof(int));
	before = rw_alloc(sizeof(int));
	after = rw_alloc(sizeof(int));
	sharer = rw_alloc(sizeof(int));
	targets = rw_alloc(sizeof(int));
	printf("KSMINSPECT-AFTER-BEGIN\n{\"target_node\": %d, \"flags\": \"MPOL_MF_MOVE_ALL\", "
	       "\"status_note\": \"status: move_pages(2)'s array (null: not written, as for "
	       "every page of a batch with a page it could not migrate); nodes_after: "
	       "where each page is after the call (move_pages without nodes)\", "
	       "\"regions\": {", g_rw_target);
	for (r = 0; r < RW_COUNT; r++) {
		uintptr_t s = rw_start(r);

		n = rw_pages(r);
		rw_nodes(g_rw_mover->pid, s, n, before);
		for (j = 0; j < n; j++) {
			targets[j] = g_rw_target;
			status[j] = RW_UNWRITTEN;
		}
		ret = syscall(SYS_move_pages, g_rw_mover->pid, n, rw_addrs(s, n), targets,
			      status, MPOL_MF_MOVE_ALL_);
		err = ret < 0 ? errno : 0;
		rw_nodes(g_rw_mover->pid, s, n, after);
		rw_nodes(g_rw_sharer->pid, rw_sharer_start(r), n, sharer);
		moved = stayed = 0;
		memset(half, 0, sizeof(half));
		for (j = 0; j < n; j++) {
			int h = r == RW_SPLIT && j >= g_rmapwalk;

			if (after[j] == g_rw_target) {
				moved++;
				half[h][0]++;
			} else {
				stayed++;
				half[h][1]++;
			}
		}
		printf("%s\n \"%s\": {\"start\": \"0x%lx\", \"pages\": %ld, \"ret\": %ld, "
		       "\"errno\": %d, \"moved\": %ld, \"not_moved\": %ld",
		       r ? "," : "", rw_names[r], (unsigned long)s, n, ret, err, moved, stayed);
		if (r == RW_SPLIT)
			printf(", \"first_half\": {\"moved\": %ld, \"not_moved\": %ld}, "
			       "\"second_half\": {\"moved\": %ld, \"not_moved\": %ld}",
			       half[0][0], half[0][1], half[1][0], half[1][1]);
		printf(", \"not_moved_pages\": [");
		for (j = 0, moved = 0; j < n; j++)
			if (after[j] != g_rw_target)
				printf("%s%ld", moved++ ? ", " : "", j);
		printf("],\n  ");
		print_ints("status", status, n);
		printf(",\n  ");
		print_ints("nodes_before", before, n);
		printf(",\n  ");
		print_ints("nodes_after", after, n);
		printf(",\n  ");
		print_ints("sharer_nodes_after", sharer, n);
		printf("}");
		fflush(stdout);
	}
	printf("}");
	{
		struct rw_counts c;

		rw_count(&c);
		print_counts("ksm_after", &c);
	}
	printf("}\nKSMINSPECT-AFTER-END\n");
	fflush(stdout);
}

int main(void)
{
	long exit_flag, cow_written = 0, steps = -1, pairs_merged = 0;
	long full_scans_before_cow = -1;
	pid_t exited_pid = 0;
	long live, explain, cgroups;
	struct child *pairs = NULL, *exiter = NULL, *vol = NULL;
	int i, settled = 0;

	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	read_text("/proc/cmdline", cmdline, sizeof(cmdline));
	g_page_size = sysconf(_SC_PAGESIZE);
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);

	g_rmapwalk = param("rmapwalk", 0);
	if (g_rmapwalk > 16384)
		g_rmapwalk = 16384;
	g_sharers = param("sharers", g_rmapwalk > 0 ? 0 : 4);
	g_shared = param("shared", 32);
	g_chain = param("chain", 3);
	g_ncow = param("cow", 8);
	g_unique = param("unique", 48);
	g_nvolatile = param("volatile", g_rmapwalk > 0 ? 0 : 16);
	g_zero = param("zero", 0);
	g_npairs = param("pairs", 0);
	g_numa = param("numa", 0);
	g_sparse = param("sparse", 0);
	g_same = param("same", 0);
	g_batch = param("batch", 0);
	exit_flag = param("exit", g_rmapwalk > 0 ? 0 : 1);
	live = param("live", 0);
	explain = param("explain", 0);
	g_explain_pages = param("explain_pages", 16);
	g_nhugetlb = param("hugetlb", 2);
	cgroups = param("cgroups", 0);
	if (explain && live) {
		say("explain: not with live (ksmd is not stopped there)");
		explain = 0;
	}
	g_nthp = explain ? param("thp", 0) : 0;
	g_extra = explain || cgroups;
	if (!live) {
		/* /init: talk on the console */
		int fd = open("/dev/console", O_RDWR);

		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
		}
	}
	{
		const char *capture = strstr(cmdline, "ksmw.capture=");

		if (capture) {
			char options[128];

			sscanf(capture + strlen("ksmw.capture="), "%127s", options);
			load_capture_kernel(options);
		}
	}
	if (access(KSM "run", F_OK)) {
		/* a kernel without CONFIG_KSM: nothing to create, nothing to record */
		g_sharers = g_nvolatile = g_zero = g_npairs = exit_flag = explain = 0;
		g_nthp = 0;
		g_rmapwalk = 0;
		say("no " KSM);
	}

	if (!live)
		write_ksm("run", 0);
	{
		static const char *const tunables[] = {
			"max_page_sharing", "merge_across_nodes", "use_zero_pages",
			"pages_to_scan", "sleep_millisecs", "smart_scan",
		};
		static const long defaults[] = { -1, -1, -1, 5000, 20, -1 };

		for (i = 0; i < 6; i++) {
			long v = param(tunables[i], defaults[i]);

			if (v >= 0)
				write_ksm(tunables[i], v);
		}
	}

	if (g_batch > 0 && !access(KSM "run", F_OK))
		write_ksm("run", 1);	/* merge while the sharers fill */
	if (cgroups && setup_cgroups())
		cgroups = 0;	/* the truth says so: workload.cgroups 0 */
	for (i = 0; i < g_sharers; i++) {
		g_index = i;
		spawn_in("share", i, sharer_body, cgroups ? cgroup_names[i % 2] : NULL);
	}
	g_index = 0;
	if (g_nvolatile > 0) {
		spawn("volatile", 0, volatile_body);
		vol = &children[nchildren - 1];
	}
	if (g_zero > 0)
		spawn("zero", 0, zero_body);
	if (exit_flag) {
		spawn("exit", 0, exiter_body);
		exiter = &children[nchildren - 1];
	}
	if (g_npairs > 0) {
		spawn("pairs", 0, pairs_body);
		pairs = &children[nchildren - 1];
	}
	if (explain) {
		char meminfo[1 << 13], n[24];

		if (g_nhugetlb > 0) {
			snprintf(n, sizeof(n), "%ld", g_nhugetlb);
			write_text("/proc/sys/vm/nr_hugepages", n);
		}
		if (!read_all("/proc/meminfo", meminfo, sizeof(meminfo)))
			g_explain.huge_page_size = field_long(meminfo, "Hugepagesize") * 1024;
		if (g_nthp > 0)
			setup_thp();
		spawn_in("explain", 0, explain_body, cgroups ? cgroup_names[1] : NULL);
		g_explainer = &children[nchildren - 1];
		explain_info(g_explainer, &g_explain);
	}
	if (g_rmapwalk > 0) {
		rw_setup();
		spawn("mover", 0, mover_body);
		g_rw_mover = &children[nchildren - 1];
		spawn("rwshare", 0, rw_sharer_body);
		g_rw_sharer = &children[nchildren - 1];
	}
	say("%d processes ready; merging", nchildren);

	if (access(KSM "run", F_OK))
		goto record;
	write_ksm("run", 1);
	/* Settled: the merge counters unchanged across a full scan, after 3. */
	wait_full_scans(3, 600);
	for (i = 0; i < 20 && !settled; i++) {
		long shared = ksm_counter("pages_shared");
		long sharing = ksm_counter("pages_sharing");

		if (wait_full_scans(1, 600))
			break;
		settled = shared == ksm_counter("pages_shared") &&
			  sharing == ksm_counter("pages_sharing");
	}
	say("settled=%d full_scans=%ld pages_shared=%ld pages_sharing=%ld", settled,
	    ksm_counter("full_scans"), ksm_counter("pages_shared"),
	    ksm_counter("pages_sharing"));

	if (exiter) {
		exited_pid = exiter->pid;
		write(exiter->cmd, "x", 1);
		waitpid(exiter->pid, NULL, 0);
	}

	if (g_rmapwalk > 0)
		rw_merge_then_split();	/* ksmd still running */

	/* Stop ksmd (run=0 waits for the batch in progress), then break COW. */
	if (!live)
		write_ksm("run", 0);
	full_scans_before_cow = ksm_counter("full_scans");
	if (g_sharers > 0 && g_ncow > 0) {
		command(&children[0], 'w');
		cow_written = g_ncow;
	}
	if (live) {
		/* ksmd keeps running: let it see the written pages, no stepping */
		wait_full_scans(2, 600);
	} else if (pairs) {
		pairs_merged = proc_long(pairs->pid, "ksm_merging_pages");
		command(pairs, 'w');
		if (ksm_counter("pages_scanned") >= 0)
			steps = step_until_pairs_unmerged(pairs);
	} else if (cow_written) {
		/* let ksmd see the written pages once */
		write_ksm("run", 1);
		wait_full_scans(1, 600);
		write_ksm("run", 0);
	}
	if (g_explainer) {
		step_into_unscanned(g_explainer, &g_explain_scan);
		command(g_explainer, 's');	/* volatile no more: the truth holds still */
	}
	if (vol)
		command(vol, 's');

record:
	printf("KSMINSPECT-TRUTH-BEGIN\n{");
	print_sysfs();
	printf(",\n\"processes\": [");
	for (i = 0; i < nchildren; i++) {
		printf("%s\n  ", i ? "," : "");
		print_process(&children[i], children[i].pid == exited_pid);
	}
	printf("],\n\"workload\": {\"sharers\": %ld, \"shared\": %ld, \"chain\": %ld, "
	       "\"cow\": %ld, \"unique\": %ld, \"volatile\": %ld, \"zero\": %ld, "
	       "\"pairs\": %ld, \"numa\": %ld, \"exited_pid\": %d, "
	       "\"cow_written\": %ld, \"pairs_merged_before_write\": %ld, "
	       "\"pairs_written\": %ld, \"single_steps\": %ld, "
	       "\"full_scans_before_cow\": %ld, \"settled\": %s",
	       g_sharers, g_shared, g_chain, g_ncow, g_unique, g_nvolatile, g_zero,
	       g_npairs, g_numa, exited_pid, cow_written, pairs_merged,
	       pairs ? 2 * g_npairs : 0, steps, full_scans_before_cow,
	       settled ? "true" : "false");
	if (g_extra)	/* keys of the explain and cgroups fixtures only */
		printf(", \"explain\": %ld, \"explain_pages\": %ld, \"hugetlb\": %ld, "
		       "\"cgroups\": %ld", explain, explain ? g_explain_pages : 0,
		       explain ? g_nhugetlb : 0, cgroups);
	if (g_nthp > 0)	/* only with ksmw.thp: the truth of the others unchanged */
		printf(", \"thp\": %ld", g_nthp);
	if (g_rmapwalk > 0)	/* likewise */
		printf(", \"rmapwalk\": %ld", g_rmapwalk);
	printf("},\n");
	{
		struct utsname u;

		uname(&u);
		printf("\"kernel_release\": ");
		json_string(u.release);
		printf(",\n\"machine\": ");
		json_string(u.machine);
		printf(",\n\"page_size\": %lu,\n", g_page_size);
	}
	printf("\"cmdline\": ");
	json_string(cmdline);
	if (cgroups)
		print_cgroups();
	if (explain)
		print_hugetlb();
	if (g_rmapwalk > 0)
		print_rmapwalk();
	printf("}\nKSMINSPECT-TRUTH-END\nKSMINSPECT-READY\n");
	fflush(stdout);
	if (g_rmapwalk > 0)
		rmapwalk_after_dump();	/* once the host has the dump */
	if (strstr(cmdline, "ksmw.capture=")) {
		/* crash: the capture kernel writes the dump; first, 10 s for
		 * the host to take QEMU's dumps of the same state */
		int fd = open("/proc/sysrq-trigger", O_WRONLY);

		sleep(10);
		if (fd >= 0)
			write(fd, "c", 1);
		say("sysrq-trigger: no crash");
	}

	for (;;) {
		pause();
	}
}
