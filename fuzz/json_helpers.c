/*-------------------------------------------------------------------------
 *
 * json_helpers.c
 *	  Fuzz target: the JSON and response helpers every provider relies on:
 *	  mm_json_get_string(), mm_http_classify(), mm_clip_utf8() and
 *	  mm_json_dump().
 *
 * The first input byte picks the helper, the second is a small number
 * (a length limit or part of an HTTP status), and the rest is the data.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "harness.h"

/*
 * Fetch every member of an object that the fuzzer made, with NULs
 * allowed in the parse, and check what mm_json_get_string() accepts:
 * a string of 1..maxlen bytes without NUL, or an integer.
 */
static void
check_get_string(const char *data, size_t len, size_t maxlen)
{
	json_t	   *root = json_loadb(data, len, JSON_ALLOW_NUL, NULL);
	const char *key;
	json_t	   *member;

	json_object_foreach(root, key, member)
	{
		const char *value;
		bool		ok;

		/* a key with a NUL in it names another member in C */
		if (json_object_get(root, key) != member)
			continue;
		ok = mm_json_get_string(root, key, &value, maxlen);

		if (json_is_integer(member))
		{
			if (!ok || strcmp(value, psprintf("%lld",
											  (long long) json_integer_value(member))) != 0)
				fuzz_fail("integer member \"%s\" not returned as its decimal", key);
		}
		else if (json_is_string(member))
		{
			size_t		n = json_string_length(member);
			bool		want = n > 0 && n <= maxlen &&
				memchr(json_string_value(member), '\0', n) == NULL;

			if (ok != want)
				fuzz_fail("string member \"%s\" of %zu bytes: accepted %d, expected %d",
						  key, n, ok, want);
			if (ok && strlen(value) != n)
				fuzz_fail("string member \"%s\" returned cut short", key);
		}
		else if (ok)
			fuzz_fail("member \"%s\" of type %d accepted as a string", key,
					  (int) json_typeof(member));
	}
	json_decref(root);
}

/* Errors from a status and body: printable, short, and the right verdict. */
static void
check_classify(long status, const char *data, size_t len, bool transport)
{
	MMHttpResponse resp;
	MMOutcome	out;
	MMResult	want;
	char	   *body = malloc(len + 1);

	memcpy(body, data, len);
	body[len] = '\0';
	memset(&resp, 0, sizeof(resp));
	resp.status = status;
	resp.curl_code = transport ? 7 : 0;
	resp.curl_error = transport ? "Failed to connect to 127.0.0.1 port 9 after 0 ms" : NULL;
	resp.body = body;
	resp.body_len = len;
	resp.retry_after_ms = -1;
	memset(&out, 0x7f, sizeof(out));
	mm_http_classify(&resp, &out);
	free(body);

	if (transport)
		want = MM_RETRY;
	else if (status >= 200 && status < 300)
		want = MM_OK;
	else if (status == 408 || status == 429 || status >= 500)
		want = MM_RETRY;
	else
		want = MM_FAIL;
	if (out.result != want)
		fuzz_fail("HTTP %ld classified as %d, expected %d", status,
				  (int) out.result, (int) want);
	if (out.token_dead || out.retry_after_ms != -1)
		fuzz_fail("classify set token_dead or changed retry_after_ms");
	if (want == MM_OK && out.error != NULL)
		fuzz_fail("success comes with an error text");
	if (want != MM_OK && !transport)
	{
		if (strlen(out.error) > strlen("HTTP -9223372036854775808: ") + 200)
			fuzz_fail("error text of %zu bytes", strlen(out.error));
		for (const char *c = out.error; *c; c++)
			if (*c < 0x20 || *c > 0x7e)
				fuzz_fail("error text contains byte 0x%02x", (unsigned char) *c);
	}
	fuzz_check_outcome(&out, false);
}

/* A clipped valid string is its longest valid prefix within maxlen. */
static void
check_clip(const char *data, size_t len, size_t maxlen)
{
	char	   *s = palloc(len + 1);
	char	   *clipped;
	size_t		n;

	memcpy(s, data, len);
	s[len] = '\0';
	len = strlen(s);
	if (!fuzz_valid_utf8(s, len))
		return;
	clipped = mm_clip_utf8(s, maxlen);
	n = strlen(clipped);
	if (n > maxlen || memcmp(clipped, s, n) != 0)
		fuzz_fail("clipped text is not a prefix within %zu bytes", maxlen);
	if (!fuzz_valid_utf8(clipped, n))
		fuzz_fail("clipped text is not valid UTF-8");
	if (n < Min(len, maxlen) && n + 4 <= Min(len, maxlen))
		fuzz_fail("clipping to %zu bytes dropped more than one character", maxlen);
	if (len <= maxlen && n != len)
		fuzz_fail("text within the limit was clipped");
}

/*
 * A string dumped by mm_json_dump() parses back to the same bytes.  The
 * product's strings are C strings, so the data ends at its first NUL.
 */
static void
check_dump(const char *data, size_t len)
{
	json_t	   *value;
	json_t	   *root;
	char	   *text;

	len = strnlen(data, len);
	value = json_stringn(data, len);

	if (value == NULL)
	{
		if (fuzz_valid_utf8(data, len))
			fuzz_fail("jansson rejected valid UTF-8");
		return;
	}
	text = mm_json_dump(json_pack("[O]", value));
	root = fuzz_parse_json(text, "dumped string");
	if (!json_equal(json_array_get(root, 0), value))
		fuzz_fail("string does not survive mm_json_dump()");
	json_decref(root);
	json_decref(value);
}

static void
run_input(void *arg)
{
	FuzzChunk  *in = (FuzzChunk *) arg;
	const uint8_t *d = (const uint8_t *) in->data;
	const char *rest = in->data + 2;
	size_t		len = in->len - 2;

	switch (d[0] % 5)
	{
		case 0:
			check_get_string(rest, len, d[1] + 1);
			break;
		case 1:
		case 2:
			check_classify(100 + d[1] * 2 + (d[0] / 5) % 2, rest, len,
						   d[0] % 5 == 2 && d[1] < 16);
			break;
		case 3:
			check_clip(rest, len, d[1]);
			break;
		case 4:
			check_dump(rest, len);
			break;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FuzzChunk	in;

	if (size < 2)
		return 0;
	in.data = (const char *) data;
	in.len = size;
	(void) fuzz_run(run_input, &in);
	return 0;
}
