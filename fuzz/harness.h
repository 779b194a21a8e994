/*-------------------------------------------------------------------------
 *
 * harness.h
 *	  Shared pieces of the matchmaker fuzz targets.
 *
 * Each target drives the product's providers the way the worker does:
 * it starts a job, and the requests the provider makes are captured
 * instead of sent (the link wraps mm_http_request and mm_http_post).  The
 * target then hands each captured request a response cut from the fuzz
 * input, and checks what the provider did with it.
 *
 * A fuzz input for the response targets is a list of chunks separated by
 * a line "%%".  A response chunk starts with a line "<status> [Retry-After
 * value]"; status 0 stands for a transport error; the rest of the chunk is
 * the body.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FUZZ_HARNESS_H
#define FUZZ_HARNESS_H

#include "postgres.h"

#include "matchmaker.h"

/* backend_stub.c */
extern int	stub_error_count;
extern const char *stub_last_error;
extern int64 stub_clock_offset_ms;

/* one request a provider made */
typedef struct FuzzRequest
{
	char	   *url;
	char	   *body;
	char	   *headers[8];		/* NULL-terminated copies */
	const char *content_type;	/* NULL: application/json */
	bool		http2;
	MMHttpDone	done;
	void	   *arg;
	MemoryContext cxt;			/* current when the request was made */
} FuzzRequest;

/* a piece of the fuzz input */
typedef struct FuzzChunk
{
	const char *data;
	size_t		len;
} FuzzChunk;

#define FUZZ_MAX_CHUNKS 16

/* what the providers reported through mm_*_done() */
extern int	fuzz_rooms_done;
extern int	fuzz_closes_done;
extern int	fuzz_pushes_done;

extern MemoryContext fuzz_cxt;

extern void fuzz_init(void);
extern bool fuzz_run(void (*body) (void *), void *arg);
extern int	fuzz_split(const uint8_t *data, size_t size, FuzzChunk *chunks,
					   int max);
extern char *fuzz_text(FuzzChunk chunk);

extern FuzzRequest *fuzz_take_request(void);
extern int	fuzz_pending_requests(void);
extern void fuzz_respond(FuzzRequest *req, FuzzChunk chunk);
extern void fuzz_respond_raw(FuzzRequest *req, long status, int curl_code,
							 const char *body, size_t len, int retry_after_ms);
extern const char *fuzz_header(FuzzRequest *req, const char *name);

extern MMRoomJob *fuzz_room_job(int64 match_id, const char *user_a,
								const char *user_b, const char *mood);
extern MMPushJob *fuzz_push_job(int64 outbox_id, const char *push_token,
								const char *payload);

extern void fuzz_check_outcome(const MMOutcome *out, bool push);
extern bool fuzz_valid_utf8(const char *s, size_t len);
extern json_t *fuzz_parse_json(const char *text, const char *what);
extern json_t *fuzz_check_jwt(const char *jwt, json_t **header,
							  const char *hs256_secret);
extern size_t fuzz_base64url_decode(const char *in, size_t len, uint8 *out);
extern void fuzz_expect_string(json_t *obj, const char *key,
							   const char *expected, const char *what);
extern char *fuzz_write_key_file(const char *name, const char *contents);
extern char *fuzz_pem_private_key(bool rsa);

extern void fuzz_fail(const char *fmt,...) pg_attribute_printf(1, 2) pg_attribute_noreturn();

#endif							/* FUZZ_HARNESS_H */
