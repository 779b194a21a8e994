/*-------------------------------------------------------------------------
 *
 * matchmaker.h
 *	  Declarations shared by the matchmaker worker, its HTTP engine and its
 *	  providers.
 *
 * The worker moves rows through the state machine kept in the matchmaker
 * schema.  Room providers turn a pending match into a room plus one join
 * token per user; push providers deliver one outbox row.  Both talk HTTP
 * through the engine in http.c and report back with an MMOutcome.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MATCHMAKER_H
#define MATCHMAKER_H

#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "port/atomics.h"
#include "utils/guc.h"

#include <jansson.h>

/* limits on what providers may hand back */
#define MM_MAX_ROOM_LEN		255
#define MM_MAX_TOKEN_LEN	4096
#define MM_MAX_RESPONSE		(1024 * 1024)

/* settings (matchmaker.c) */
typedef enum MMRoomProviderKind
{
	MM_ROOM_JANUS,
	MM_ROOM_HTTP,
	MM_ROOM_AGORA,
	MM_ROOM_LIVEKIT
} MMRoomProviderKind;

typedef enum MMPushProviderKind
{
	MM_PUSH_WEBHOOK,
	MM_PUSH_FCM,
	MM_PUSH_APNS
} MMPushProviderKind;

extern char *mm_database;
extern int	mm_room_provider;
extern char *mm_room_url;
extern int	mm_push_provider;
extern char *mm_push_url;
extern char *mm_ca_file;
extern int	mm_intent_ttl;
extern int	mm_max_attempts;
extern int	mm_retry_base;
extern int	mm_retry_max;
extern int	mm_connect_timeout;
extern int	mm_request_timeout;
extern int	mm_max_inflight;
extern int	mm_senders;
extern int	mm_poll_interval;
extern int	mm_batch_size;
extern char *mm_webhook_secret;
extern char *mm_fcm_project_id;
extern char *mm_fcm_key_file;
extern char *mm_fcm_token_url;
extern char *mm_fcm_url;
extern char *mm_apns_url;
extern char *mm_apns_key_file;
extern char *mm_apns_key_id;
extern char *mm_apns_team_id;
extern char *mm_apns_topic;
extern char *mm_agora_app_id;
extern char *mm_agora_app_certificate;
extern char *mm_livekit_url;
extern char *mm_livekit_api_key;
extern char *mm_livekit_api_secret;
extern int	mm_room_token_ttl;
extern int	mm_room_lifetime;

/* how one attempt at a provider went */
typedef enum MMResult
{
	MM_OK,						/* done */
	MM_RETRY,					/* try again later */
	MM_FAIL,					/* give up: retrying cannot help */
	MM_STALE					/* the row is gone: record nothing */
} MMResult;

typedef struct MMOutcome
{
	MMResult	result;
	char	   *error;			/* palloc'd, NULL on success */
	int			retry_after_ms; /* lower bound requested by the peer, or -1 */
	bool		token_dead;		/* the push service rejected the push token */
} MMOutcome;

/* http.c: one libcurl multi handle serving every request */
typedef struct MMHttpResponse
{
	long		status;			/* HTTP status, 0 if none came */
	int			curl_code;		/* CURLcode */
	const char *curl_error;		/* curl's message when curl_code != 0 */
	const char *redirect_url;	/* Location of a 3xx answer, or NULL */
	const char *body;			/* NUL-terminated, may be empty */
	size_t		body_len;
	int			retry_after_ms; /* parsed Retry-After, or -1 */
	bool		truncated;		/* body cut at MM_MAX_RESPONSE */
} MMHttpResponse;

typedef void (*MMHttpDone) (const MMHttpResponse *resp, void *arg);

/* a request beyond the plain JSON POST */
typedef struct MMHttpSpec
{
	const char *url;
	const char *body;
	const char *const *headers; /* NULL-terminated "Name: value" list */
	const char *content_type;	/* NULL: application/json */
	bool		http2;			/* require HTTP/2 */
} MMHttpSpec;

extern void mm_http_init(void);
extern void mm_http_post(const char *url, const char *body,
						 const char *const *headers,
						 MMHttpDone done, void *arg);
extern void mm_http_request(const MMHttpSpec *spec, MMHttpDone done, void *arg);
extern int	mm_http_inflight(void);
extern int	mm_http_socket_count(void);
extern int	mm_http_wait_setup(void *set);
extern long mm_http_timeout_ms(void);
extern void mm_http_perform(void);
extern void mm_http_socket_ready(void);
extern void mm_http_classify(const MMHttpResponse *resp, MMOutcome *out);
extern char *mm_redact_secrets(MemoryContext cxt, const char *text);
extern int	mm_http_parse_retry_after(const char *value, size_t len);

/* json.c */
extern char *mm_json_dump(json_t *value);
extern bool mm_json_get_string(json_t *obj, const char *key,
							   const char **value, size_t maxlen);
extern char *mm_clip_utf8(const char *s, size_t maxlen);
extern char *mm_printable_text(const char *s, size_t len);
extern char *mm_random_token(int nbytes);
extern int64 mm_random_room_id(void);

/* sign.c */
extern char *mm_base64(const uint8 *data, size_t len, bool url);
extern int	mm_base64_decode(const char *in, uint8 *out, size_t outlen);
extern void mm_hmac_sha256(const uint8 *key, size_t keylen,
						   const char *msg, size_t msglen, uint8 *out);
extern struct evp_pkey_st *mm_load_private_key(const char *pem,
											   const char **error);
extern char *mm_jwt_sign(json_t *header, json_t *claims, struct evp_pkey_st *key,
						 const char **error);
extern char *mm_jwt_sign_hs256(json_t *header, json_t *claims,
							   const char *secret);
extern char *mm_read_secret_file(const char *path, const char **error);
extern bool mm_check_readable_file(const char *path, const char **error);
extern char *mm_agora_token(const char *app_id, const char *certificate,
							const char *channel, uint32 uid, uint32 issue_ts,
							uint32 expire, uint32 salt, bool publisher,
							const char **error);

/* room providers */
typedef struct MMRoomJob
{
	int64		match_id;
	char	   *mood;
	char	   *users[2];
	json_t	   *plan;			/* provider state persisted in matches.plan */
	bool		plan_is_new;	/* plan must be saved before the request */
	int			attempts;
	Oid			extension;		/* the extension the row was claimed from */
	MemoryContext cxt;			/* contains the job; deleted when recorded */

	/* filled in by the provider */
	MMOutcome	outcome;
	char	   *room;
	char	   *tokens[2];
	json_t	   *extras[2];		/* more push fields per user, or NULL */

	struct MMRoomJob *next;		/* worker's lists */
} MMRoomJob;

/* a room to destroy: its call ended or its lifetime ran out */
typedef struct MMCloseJob
{
	int64		match_id;
	json_t	   *plan;			/* matches.plan of the room */
	Oid			extension;		/* the extension the row was read from */
	MemoryContext cxt;			/* contains the job; deleted when recorded */
	MMOutcome	outcome;
	struct MMCloseJob *next;
} MMCloseJob;

typedef struct MMRoomProvider
{
	const char *name;
	/* choose what must stay the same across attempts, or leave plan NULL */
	void		(*make_plan) (MMRoomJob *job);
	/* start the requests; call mm_room_done(job) exactly once when over */
	void		(*start) (MMRoomJob *job);
	/* periodic housekeeping (keepalives), may be NULL */
	void		(*tick) (void);
	/* forget cached state after a settings change, may be NULL */
	void		(*reset) (void);
	/* destroy a room; call mm_close_done(job) once; NULL if rooms need no closing */
	void		(*close) (MMCloseJob *job);
} MMRoomProvider;

extern const MMRoomProvider mm_room_janus;
extern const MMRoomProvider mm_room_http;
extern const MMRoomProvider mm_room_agora;
extern const MMRoomProvider mm_room_livekit;
extern void mm_room_done(MMRoomJob *job);
extern void mm_close_done(MMCloseJob *job);

/* push providers */
typedef struct MMPushJob
{
	int64		outbox_id;
	char	   *push_token;
	char	   *payload;		/* the data object, as JSON text */
	int			attempts;
	int64		credential_stamp;	/* which provider credential was sent */
	Oid			extension;		/* the extension the row was claimed from */
	MemoryContext cxt;			/* contains the job; deleted when recorded */
	MMOutcome	outcome;
	struct MMPushJob *next;
} MMPushJob;

typedef struct MMPushProvider
{
	const char *name;
	/* start the requests; call mm_push_done(job) exactly once when over */
	void		(*start) (MMPushJob *job);
	/* forget cached credentials after a settings change, may be NULL */
	void		(*reset) (void);
} MMPushProvider;

extern const MMPushProvider mm_push_webhook;
extern const MMPushProvider mm_push_fcm;
extern const MMPushProvider mm_push_apns;

/* check hooks for key file settings (push_fcm.c, push_apns.c) */
extern bool mm_check_fcm_key_file(char **newval, void **extra, GucSource source);
extern bool mm_check_apns_key_file(char **newval, void **extra, GucSource source);
extern bool mm_check_webhook_secret(char **newval, void **extra, GucSource source);
extern void mm_push_done(MMPushJob *job);

/*
 * End a room or push job before any request, with the given result and
 * error text.
 */
static inline void
mm_room_end(MMRoomJob *job, MMResult result, const char *error)
{
	job->outcome.result = result;
	job->outcome.error = pstrdup(error);
	job->outcome.retry_after_ms = -1;
	mm_room_done(job);
}

static inline void
mm_push_end(MMPushJob *job, MMResult result, const char *error)
{
	job->outcome.result = result;
	job->outcome.error = pstrdup(error);
	job->outcome.retry_after_ms = -1;
	mm_push_done(job);
}

/* the maximum of matchmaker.senders */
#define MM_MAX_SENDERS			8

/*
 * Shared memory (matchmaker.c): how inserting backends find the worker,
 * and how the worker finds the senders.
 */
typedef struct MMShared
{
	pg_atomic_uint32 worker_procno; /* worker's pgprocno + 1, or 0 */
	pg_atomic_uint32 worker_database;	/* OID of the database it serves */
	pg_atomic_uint32 sender_procno[MM_MAX_SENDERS]; /* each sender's pgprocno + 1, or 0 */
} MMShared;

extern MMShared *mm_shared;

/* match.c */
extern Datum mm_text_array(Datum *elems, int n);
extern Datum mm_int8_array(Datum *elems, int n);
extern SPIPlanPtr mm_prepare(SPIPlanPtr *plan, const char *sql, int nargs,
							 Oid *argtypes);
extern int	mm_match_pass(int max_per_mood, bool *more, int lease_count,
						  int lease_ms);

/* worker.c */
extern PGDLLEXPORT void matchmaker_worker_main(Datum main_arg);
extern MemoryContext mm_job_context;

#endif							/* MATCHMAKER_H */
