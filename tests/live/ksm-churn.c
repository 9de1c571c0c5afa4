/*
 * ksm-churn PROCS PAGES CONTENTS: a KSM host that keeps moving. PROCS
 * processes each map PAGES mergeable pages holding CONTENTS distinct
 * contents (so chains of dups form beyond max_page_sharing), then keep
 * writing every page back with its own content: each write breaks the COW
 * of a merged page, ksmd merges it again, and the stable and unstable trees
 * change all the time. Prints "ksm-churn ready" once the processes run.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

static void churn(long pages, long contents, long page)
{
	volatile unsigned char *p = mmap(NULL, pages * page, PROT_READ | PROT_WRITE,
					 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct timespec pause = {0, 2000000};
	long j;

	if (p == MAP_FAILED || madvise((void *)p, pages * page, MADV_MERGEABLE)) {
		perror("ksm-churn");
		exit(1);
	}
	for (j = 0; j < pages; j++) {	/* differ in the first and last byte only */
		p[j * page] = (unsigned char)(j % contents + 1);
		p[j * page + page - 1] = (unsigned char)(j % contents + 1);
	}
	for (;;) {
		for (j = 0; j < pages; j++) {
			p[j * page] = (unsigned char)(j % contents + 1);	/* same content, new page */
			if (j % 64 == 63)
				nanosleep(&pause, NULL);
		}
	}
}

int main(int argc, char **argv)
{
	long procs, pages, contents, page = sysconf(_SC_PAGESIZE), i;

	if (argc != 4) {
		fprintf(stderr, "usage: ksm-churn PROCS PAGES CONTENTS\n");
		return 2;
	}
	procs = atol(argv[1]);
	pages = atol(argv[2]);
	contents = atol(argv[3]);
	for (i = 0; i < procs; i++) {
		if (fork() == 0) {
			prctl(PR_SET_NAME, "ksm-churn");
			churn(pages, contents, page);
		}
	}
	printf("ksm-churn ready\n");
	fflush(stdout);
	pause();
	return 0;
}
