/*-------------------------------------------------------------------------
 *
 * room_janus.c
 *	  Room provider "janus": private AudioBridge rooms on a Janus server.
 *
 * The worker keeps one Janus session with one AudioBridge handle and sends
 * every "create" through it; creating a session per match would triple
 * the requests.  Jobs that arrive while the session is being set up wait
 * in a queue.  Janus drops a session after 60 s without requests, so an
 * idle session gets a keepalive every 25 s.  If Janus lost the session
 * anyway (restart, timeout), its error response shows it, and the next job
 * builds a new session.
 *
 * Each room is private and checks tokens: its "allowed" list contains one
 * random token per user, and those tokens are what the users get pushed.
 * The room id, secret and tokens are chosen before the first attempt and
 * kept in matches.plan, so a retry after a lost response requests the very
 * same room; Janus then returns 486 "room exists", which for an id this
 * worker picked at random means the earlier attempt went through.
 *
 * Janus returns HTTP 200 even for errors: the result is the
 * "janus" field and, for plugin requests, plugindata.data.error_code.
 *
 * Rooms are created with permanent=false.  The worker destroys a room
 * when the app ends the call (matchmaker.end_match()) or when the room has
 * lived matchmaker.room_lifetime, whichever comes first; each AudioBridge
 * room runs a mixer thread in Janus, so rooms must not pile up.  The room
 * id and secret live in matches.plan, so rooms made before a crash are
 * found and destroyed too.  Destroying a room Janus does not know (485)
 * counts as done.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "matchmaker.h"

#define JANUS_KEEPALIVE_MS	25000

/* Janus core error codes we act on */
#define JANUS_ERROR_SESSION_NOT_FOUND	458
#define JANUS_ERROR_HANDLE_NOT_FOUND	459
/* AudioBridge error codes */
#define AUDIOBRIDGE_ERROR_NO_SUCH_ROOM	485
#define AUDIOBRIDGE_ERROR_ROOM_EXISTS	486

typedef enum JanusState
{
	JANUS_NONE,					/* no session */
	JANUS_CONNECTING,			/* create or attach in flight */
	JANUS_READY
} JanusState;

static JanusState state = JANUS_NONE;
static json_int_t session_id;
static json_int_t handle_id;
static int	generation = 0;		/* bumped on reset; stale responses ignored */
static TimestampTz last_request = 0;
static uint64 transaction_counter = 0;
static MMRoomJob *queue_head = NULL;
static MMRoomJob *queue_tail = NULL;

/*
 * Session requests outlive any one job, so they allocate here rather than
 * in the job that happened to start them.  Nothing keeps pointers into it
 * between requests, so it is emptied before each new session request.
 */
static MemoryContext session_cxt = NULL;

static MemoryContext
session_context(void)
{
	if (session_cxt == NULL)
		session_cxt = AllocSetContextCreate(mm_job_context,
											"matchmaker Janus session",
											ALLOCSET_SMALL_SIZES);
	else
		MemoryContextReset(session_cxt);
	return session_cxt;
}

static void janus_create_session(void);

static char *
next_transaction(void)
{
	return psprintf("mm-%d-" UINT64_FORMAT, MyProcPid, ++transaction_counter);
}

static void
janus_post(const char *url, json_t *body, MMHttpDone done, void *arg)
{
	json_object_set_new(body, "transaction", json_string(next_transaction()));
	last_request = GetCurrentTimestamp();
	mm_http_post(url, mm_json_dump(body), NULL, done, arg);
}

/*
 * Parse a Janus response.  Returns the parsed root on janus == "success" or
 * "ack"; otherwise fills *out with the verdict and returns NULL.  *code
 * gets the Janus error code when there is one.
 */
static json_t *
janus_parse(const MMHttpResponse *resp, MMOutcome *out, int *code)
{
	json_t	   *root;
	json_error_t jerr;
	const char *kind;

	*code = 0;
	mm_http_classify(resp, out);
	if (out->result != MM_OK)
		return NULL;

	root = json_loadb(resp->body, resp->body_len, 0, &jerr);
	if (root == NULL || !json_is_object(root))
	{
		out->result = MM_RETRY;
		out->error = psprintf("invalid JSON in Janus response: %s",
							  root ? "not an object" :
							  mm_printable_text(jerr.text, strlen(jerr.text)));
		json_decref(root);
		return NULL;
	}

	kind = json_string_value(json_object_get(root, "janus"));
	if (kind != NULL &&
		(strcmp(kind, "success") == 0 || strcmp(kind, "ack") == 0))
		return root;

	if (kind != NULL && strcmp(kind, "error") == 0)
	{
		json_t	   *err = json_object_get(root, "error");
		const char *reason = json_string_value(json_object_get(err, "reason"));

		*code = (int) json_integer_value(json_object_get(err, "code"));
		out->error = psprintf("Janus error %d: %s", *code,
							  reason ? reason : "no reason given");
		/* a lost session is rebuilt on the next attempt */
		out->result = (*code == JANUS_ERROR_SESSION_NOT_FOUND ||
					   *code == JANUS_ERROR_HANDLE_NOT_FOUND) ?
			MM_RETRY : MM_FAIL;
	}
	else
	{
		out->result = MM_RETRY;
		out->error = psprintf("unexpected \"janus\" value in Janus response: %s",
							  kind ? kind : "(missing)");
	}
	json_decref(root);
	return NULL;
}

static void
forget_session(void)
{
	state = JANUS_NONE;
	generation++;
}

/* End every queued job with the same verdict. */
static void
fail_queue(const MMOutcome *why)
{
	while (queue_head != NULL)
	{
		MMRoomJob  *job = queue_head;

		queue_head = job->next;
		job->next = NULL;
		job->outcome.result = why->result == MM_OK ? MM_RETRY : why->result;
		job->outcome.error = pstrdup(why->error ? why->error :
									 "Janus session could not be set up");
		job->outcome.retry_after_ms = why->retry_after_ms;
		mm_room_done(job);
	}
	queue_tail = NULL;
}

static void
room_answer(const MMHttpResponse *resp, void *arg)
{
	MMRoomJob  *job = (MMRoomJob *) arg;
	json_t	   *root;
	json_t	   *data;
	const char *verdict;
	int			code;
	int			plugin_code;

	root = janus_parse(resp, &job->outcome, &code);
	if (root == NULL)
	{
		if ((code == JANUS_ERROR_SESSION_NOT_FOUND ||
			 code == JANUS_ERROR_HANDLE_NOT_FOUND) && state == JANUS_READY)
			forget_session();
		mm_room_done(job);
		return;
	}

	data = json_object_get(json_object_get(root, "plugindata"), "data");
	verdict = json_string_value(json_object_get(data, "audiobridge"));
	plugin_code = (int) json_integer_value(json_object_get(data, "error_code"));

	if ((verdict != NULL && strcmp(verdict, "created") == 0) ||
		plugin_code == AUDIOBRIDGE_ERROR_ROOM_EXISTS)
	{
		json_t	   *tokens = json_object_get(job->plan, "tokens");

		job->outcome.result = MM_OK;
		job->room = psprintf("%lld", (long long)
							 json_integer_value(json_object_get(job->plan, "room")));
		job->tokens[0] = pstrdup(json_string_value(json_array_get(tokens, 0)));
		job->tokens[1] = pstrdup(json_string_value(json_array_get(tokens, 1)));
	}
	else if (plugin_code != 0)
	{
		const char *reason = json_string_value(json_object_get(data, "error"));

		job->outcome.result = MM_FAIL;
		job->outcome.error = psprintf("AudioBridge error %d: %s", plugin_code,
									  reason ? reason : "no reason given");
	}
	else
	{
		job->outcome.result = MM_RETRY;
		job->outcome.error = pstrdup("Janus response to create contains neither a room nor an error");
	}
	json_decref(root);
	mm_room_done(job);
}

static void
janus_create_room(MMRoomJob *job)
{
	json_t	   *plan = job->plan;
	json_t	   *body;
	char	   *url;

	body = json_pack("{s:s, s:{s:s, s:O, s:b, s:b, s:O, s:O, s:s}}",
					 "janus", "message",
					 "body",
					 "request", "create",
					 "room", json_object_get(plan, "room"),
					 "permanent", 0,
					 "is_private", 1,
					 "secret", json_object_get(plan, "secret"),
					 "allowed", json_object_get(plan, "tokens"),
					 "description", psprintf("match " INT64_FORMAT, job->match_id));
	url = psprintf("%s/%lld/%lld", mm_room_url,
				   (long long) session_id, (long long) handle_id);
	janus_post(url, body, room_answer, job);
}

static void
flush_queue(void)
{
	while (queue_head != NULL)
	{
		MMRoomJob  *job = queue_head;

		queue_head = job->next;
		job->next = NULL;
		janus_create_room(job);
	}
	queue_tail = NULL;
}

static void
attach_answer(const MMHttpResponse *resp, void *arg)
{
	MMOutcome	out;
	int			code;
	json_t	   *root;

	if ((intptr_t) arg != generation)
		return;
	root = janus_parse(resp, &out, &code);
	if (root == NULL)
	{
		forget_session();
		fail_queue(&out);
		return;
	}
	handle_id = json_integer_value(json_object_get(json_object_get(root, "data"), "id"));
	json_decref(root);
	if (handle_id <= 0)
	{
		out.result = MM_RETRY;
		out.error = pstrdup("Janus attach response is missing the handle id");
		forget_session();
		fail_queue(&out);
		return;
	}
	state = JANUS_READY;
	elog(DEBUG1, "matchmaker: Janus session %lld ready",
		 (long long) session_id);
	flush_queue();
}

static void
session_answer(const MMHttpResponse *resp, void *arg)
{
	MMOutcome	out;
	int			code;
	json_t	   *root;
	json_t	   *body;

	if ((intptr_t) arg != generation)
		return;
	root = janus_parse(resp, &out, &code);
	if (root == NULL)
	{
		forget_session();
		fail_queue(&out);
		return;
	}
	session_id = json_integer_value(json_object_get(json_object_get(root, "data"), "id"));
	json_decref(root);
	if (session_id <= 0)
	{
		out.result = MM_RETRY;
		out.error = pstrdup("Janus create response is missing the session id");
		forget_session();
		fail_queue(&out);
		return;
	}

	body = json_pack("{s:s, s:s}", "janus", "attach",
					 "plugin", "janus.plugin.audiobridge");
	janus_post(psprintf("%s/%lld", mm_room_url, (long long) session_id),
			   body, attach_answer, (void *) (intptr_t) generation);
}

static void
janus_create_session(void)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(session_context());

	state = JANUS_CONNECTING;
	janus_post(mm_room_url, json_pack("{s:s}", "janus", "create"),
			   session_answer, (void *) (intptr_t) generation);
	MemoryContextSwitchTo(oldcxt);
}

static void
janus_make_plan(MMRoomJob *job)
{
	if (job->plan != NULL)
		return;
	job->plan = json_pack("{s:I, s:s, s:[s, s]}",
						  "room", (json_int_t) mm_random_room_id(),
						  "secret", mm_random_token(16),
						  "tokens", mm_random_token(16), mm_random_token(16));
	job->plan_is_new = true;
}

static void
close_answer(const MMHttpResponse *resp, void *arg)
{
	MMCloseJob *job = (MMCloseJob *) arg;
	json_t	   *root;
	json_t	   *data;
	const char *verdict;
	int			code;
	int			plugin_code;

	root = janus_parse(resp, &job->outcome, &code);
	if (root == NULL)
	{
		if ((code == JANUS_ERROR_SESSION_NOT_FOUND ||
			 code == JANUS_ERROR_HANDLE_NOT_FOUND) && state == JANUS_READY)
			forget_session();
		mm_close_done(job);
		return;
	}
	data = json_object_get(json_object_get(root, "plugindata"), "data");
	verdict = json_string_value(json_object_get(data, "audiobridge"));
	plugin_code = (int) json_integer_value(json_object_get(data, "error_code"));
	if ((verdict != NULL && strcmp(verdict, "destroyed") == 0) ||
		plugin_code == AUDIOBRIDGE_ERROR_NO_SUCH_ROOM)
		job->outcome.result = MM_OK;
	else
	{
		const char *reason = json_string_value(json_object_get(data, "error"));

		job->outcome.result = plugin_code != 0 ? MM_FAIL : MM_RETRY;
		job->outcome.error = psprintf("AudioBridge destroy failed: %d %s",
									  plugin_code,
									  reason ? reason : "no reason given");
	}
	json_decref(root);
	mm_close_done(job);
}

/*
 * Destroy a room.  Without a ready session the job ends at once as a
 * retry, and the next close pass tries again once the session is up.
 */
static void
janus_close(MMCloseJob *job)
{
	json_t	   *body;

	job->outcome.retry_after_ms = -1;
	if (state != JANUS_READY)
	{
		if (state == JANUS_NONE && mm_room_url[0] != '\0')
			janus_create_session();
		job->outcome.result = MM_RETRY;
		job->outcome.error = pstrdup("no Janus session yet");
		mm_close_done(job);
		return;
	}
	body = json_pack("{s:s, s:{s:s, s:O, s:O, s:b}}",
					 "janus", "message",
					 "body",
					 "request", "destroy",
					 "room", json_object_get(job->plan, "room"),
					 "secret", json_object_get(job->plan, "secret"),
					 "permanent", 0);
	if (body == NULL)
	{
		job->outcome.result = MM_FAIL;
		job->outcome.error = pstrdup("matches.plan has no room or secret");
		mm_close_done(job);
		return;
	}
	janus_post(psprintf("%s/%lld/%lld", mm_room_url,
						(long long) session_id, (long long) handle_id),
			   body, close_answer, job);
}

/*
 * True if a plan has the shape janus_make_plan() gives it.  A plan read
 * back from the table may have been edited by hand.
 */
static bool
plan_is_valid(json_t *plan)
{
	json_t	   *tokens = json_object_get(plan, "tokens");

	return json_is_integer(json_object_get(plan, "room")) &&
		json_integer_value(json_object_get(plan, "room")) > 0 &&
		json_is_string(json_object_get(plan, "secret")) &&
		json_array_size(tokens) == 2 &&
		json_is_string(json_array_get(tokens, 0)) &&
		json_is_string(json_array_get(tokens, 1));
}

static void
janus_start(MMRoomJob *job)
{
	job->next = NULL;
	if (!plan_is_valid(job->plan))
	{
		mm_room_end(job, MM_FAIL, "matches.plan is damaged: it needs a room id, a secret and two tokens");
		return;
	}
	if (mm_room_url[0] == '\0')
	{
		mm_room_end(job, MM_RETRY, "matchmaker.room_url is not set");
		return;
	}
	if (state == JANUS_READY)
	{
		janus_create_room(job);
		return;
	}
	if (queue_tail)
		queue_tail->next = job;
	else
		queue_head = job;
	queue_tail = job;
	if (state == JANUS_NONE)
		janus_create_session();
}

static void
keepalive_answer(const MMHttpResponse *resp, void *arg)
{
	MMOutcome	out;
	int			code;
	json_t	   *root;

	if ((intptr_t) arg != generation)
		return;
	root = janus_parse(resp, &out, &code);
	if (root == NULL)
	{
		elog(DEBUG1, "matchmaker: Janus keepalive failed: %s", out.error);
		forget_session();
		return;
	}
	json_decref(root);
}

static void
janus_tick(void)
{
	if (state != JANUS_READY)
		return;
	if (!TimestampDifferenceExceeds(last_request, GetCurrentTimestamp(),
									JANUS_KEEPALIVE_MS))
		return;
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(session_context());

		janus_post(psprintf("%s/%lld", mm_room_url, (long long) session_id),
				   json_pack("{s:s}", "janus", "keepalive"),
				   keepalive_answer, (void *) (intptr_t) generation);
		MemoryContextSwitchTo(oldcxt);
	}
}

static void
janus_reset(void)
{
	MMOutcome	why = {MM_RETRY, NULL, -1};

	forget_session();
	why.error = "room provider settings changed";
	fail_queue(&why);
}

const MMRoomProvider mm_room_janus = {
	.name = "janus",
	.make_plan = janus_make_plan,
	.start = janus_start,
	.tick = janus_tick,
	.reset = janus_reset,
	.close = janus_close,
};
