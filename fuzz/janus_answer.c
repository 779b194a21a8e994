/*-------------------------------------------------------------------------
 *
 * janus_answer.c
 *	  Fuzz target: the Janus room provider's handling of Janus responses
 *	  and of the room plan stored in matches.plan.
 *
 * Input chunks (see harness.h): the stored plan text (empty for a new
 * plan), then the responses to the provider's requests in order.  These
 * are create session, attach and create room, then destroy room (or a new
 * session if the first one never came up), then a keepalive.
 *
 * Checked: every request is valid JSON with "janus" and "transaction";
 * the create request carries the plan's room, secret and tokens; a room
 * reported as made is the plan's room with the plan's tokens; every
 * outcome is well formed (harness.c); no memory error or leak.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "harness.h"

typedef struct JanusInput
{
	FuzzChunk	chunks[FUZZ_MAX_CHUNKS];
	int			nchunks;
	int			next;
	MMRoomJob  *job;
	MMCloseJob *close;
} JanusInput;

/* Check a captured Janus request; the create request against the plan. */
static void
check_request(FuzzRequest *req, json_t *plan)
{
	json_t	   *root = fuzz_parse_json(req->body, "Janus request");
	json_t	   *body = json_object_get(root, "body");
	const char *request = json_string_value(json_object_get(body, "request"));

	if (json_string_value(json_object_get(root, "janus")) == NULL ||
		json_string_value(json_object_get(root, "transaction")) == NULL)
		fuzz_fail("Janus request lacks \"janus\" or \"transaction\": %s",
				  req->body);
	if (request != NULL && plan != NULL &&
		(strcmp(request, "create") == 0 || strcmp(request, "destroy") == 0))
	{
		if (!json_equal(json_object_get(body, "room"),
						json_object_get(plan, "room")) ||
			!json_equal(json_object_get(body, "secret"),
						json_object_get(plan, "secret")))
			fuzz_fail("Janus %s request does not carry the plan's room and secret",
					  request);
		if (strcmp(request, "create") == 0 &&
			!json_equal(json_object_get(body, "allowed"),
						json_object_get(plan, "tokens")))
			fuzz_fail("Janus create request does not allow the plan's tokens");
	}
	json_decref(root);
}

/* Respond to pending requests with the next chunks, while both last. */
static void
answer_requests(JanusInput *in, json_t *plan)
{
	FuzzRequest *req;

	while (in->next < in->nchunks && (req = fuzz_take_request()) != NULL)
	{
		check_request(req, plan);
		fuzz_respond(req, in->chunks[in->next++]);
	}
}

/* A room reported as made must be exactly the plan's room and tokens. */
static void
check_room(MMRoomJob *job)
{
	json_t	   *tokens = json_object_get(job->plan, "tokens");
	char	   *room;

	if (job->outcome.result != MM_OK)
		return;
	room = psprintf("%lld", (long long)
					json_integer_value(json_object_get(job->plan, "room")));
	if (job->room == NULL || strcmp(job->room, room) != 0)
		fuzz_fail("Janus room is %s, the plan says %s", job->room, room);
	for (int i = 0; i < 2; i++)
		if (job->tokens[i] == NULL ||
			strcmp(job->tokens[i],
				   json_string_value(json_array_get(tokens, i))) != 0)
			fuzz_fail("Janus token %d is not the plan's", i);
}

static void
run_input(void *arg)
{
	JanusInput *in = (JanusInput *) arg;
	MMRoomJob  *job;
	MMCloseJob *close;
	char	   *plan_text = fuzz_text(in->chunks[0]);
	MemoryContext cxt;

	in->next = 1;
	job = fuzz_room_job(42, "alice", "bob", "happy");
	in->job = job;

	/* as the worker claims a match: the stored plan, else a new one */
	if (plan_text[0] != '\0')
		job->plan = json_loads(plan_text, 0, NULL);
	MemoryContextSwitchTo(job->cxt);
	mm_room_janus.make_plan(job);
	mm_room_janus.start(job);
	MemoryContextSwitchTo(fuzz_cxt);
	answer_requests(in, job->plan);
	if (fuzz_rooms_done > 1)
		fuzz_fail("room job reported done %d times", fuzz_rooms_done);
	if (fuzz_rooms_done == 1)
		check_room(job);

	/* destroy the room, as when the call ends */
	cxt = AllocSetContextCreate(mm_job_context, "close job",
								ALLOCSET_SMALL_SIZES);
	close = MemoryContextAllocZero(cxt, sizeof(MMCloseJob));
	close->cxt = cxt;
	close->match_id = 42;
	close->plan = json_incref(job->plan);
	in->close = close;
	MemoryContextSwitchTo(cxt);
	mm_room_janus.close(close);
	MemoryContextSwitchTo(fuzz_cxt);
	answer_requests(in, job->plan);

	/* a keepalive falls due once the session has been idle for 25 s */
	stub_clock_offset_ms = 30000;
	mm_room_janus.tick();
	answer_requests(in, NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	JanusInput	in;

	memset(&in, 0, sizeof(in));
	in.nchunks = fuzz_split(data, size, in.chunks, FUZZ_MAX_CHUNKS);
	stub_clock_offset_ms = 0;
	(void) fuzz_run(run_input, &in);

	/* end queued jobs before their memory goes, as a settings reload does */
	mm_room_janus.reset();
	if (in.job)
	{
		json_decref(in.job->plan);
		MemoryContextDelete(in.job->cxt);
	}
	if (in.close)
	{
		json_decref(in.close->plan);
		MemoryContextDelete(in.close->cxt);
	}
	return 0;
}
