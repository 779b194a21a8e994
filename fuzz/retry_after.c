/*-------------------------------------------------------------------------
 *
 * retry_after.c
 *	  Fuzz target: the Retry-After header parser of the HTTP engine.
 *
 * The input is a raw header value, as libcurl hands it over: not
 * NUL-terminated, maybe with the line's CR LF and blanks around it.
 * The result must be -1 or a delay between 0 and one day.  A value of
 * digits only must give exactly that many whole seconds, capped at a day;
 * an HTTP date counts in milliseconds from now.
 * An HTTP date made from the input's first bytes, that many seconds from
 * now, must give about that delay.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "utils/memutils.h"

#include "harness.h"

#define DAY_MS	(86400 * 1000)

/* The delay a value of decimal digits must give, capped at one day. */
static int
expected_for_digits(const char *s, size_t len)
{
	uint64		secs = 0;

	for (size_t i = 0; i < len; i++)
	{
		secs = secs * 10 + (s[i] - '0');
		if (secs > 86400)
			return DAY_MS;
	}
	return (int) secs * 1000;
}

static void
check_raw_value(const uint8_t *data, size_t size)
{
	const char *s = (const char *) data;
	size_t		start = 0;
	size_t		end = size;
	bool		digits = true;
	int			ms;

	ms = mm_http_parse_retry_after(s, size);
	if (ms != -1 && (ms < 0 || ms > DAY_MS))
		fuzz_fail("Retry-After gave %d ms", ms);

	/* the trimming the parser does, done again here */
	while (end > 0 && strchr("\r\n \t", s[end - 1]) != NULL && s[end - 1] != '\0')
		end--;
	while (start < end && (s[start] == ' ' || s[start] == '\t'))
		start++;
	for (size_t i = start; i < end; i++)
		if (s[i] < '0' || s[i] > '9')
			digits = false;

	if (start == end && ms != -1)
		fuzz_fail("empty Retry-After gave %d ms", ms);
	if (digits && start < end && end - start < 128)
	{
		int			want = expected_for_digits(s + start, end - start);

		if (ms != want)
			fuzz_fail("Retry-After \"%.*s\" gave %d ms, expected %d",
					  (int) (end - start), s + start, ms, want);
	}
}

/* An IMF-fixdate offset seconds from now must give about that delay. */
static void
check_http_date(int32 offset)
{
	time_t		when = time(NULL) + offset;
	struct tm	tm;
	char		value[64];
	int			ms;
	int			want;

	gmtime_r(&when, &tm);
	strftime(value, sizeof(value), "%a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
	ms = mm_http_parse_retry_after(value, strlen(value));
	want = offset <= 0 ? 0 : Min(offset, 86400) * 1000;
	/* the clock may tick between the two time() calls */
	if (ms < want - 2000 || ms > want)
		fuzz_fail("Retry-After \"%s\" (%d s from now) gave %d ms",
				  value, offset, ms);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t    *copy = malloc(size ? size : 1);

	fuzz_init();
	MemoryContextReset(fuzz_cxt);
	CurrentMemoryContext = fuzz_cxt;

	/* an exact-size copy, so that a read past the value is caught */
	memcpy(copy, data, size);
	check_raw_value(copy, size);
	free(copy);

	if (size >= 4)
	{
		int32		offset;

		memcpy(&offset, data, 4);
		check_http_date(offset % (3 * 86400));
	}
	return 0;
}
