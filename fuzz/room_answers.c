/*-------------------------------------------------------------------------
 *
 * room_answers.c
 *	  Fuzz target: the responses of the "http" room service and of
 *	  LiveKit's CreateRoom.
 *
 * Input chunks (see harness.h): a first chunk of three lines, the
 * provider ("http" or "livekit") and the two user ids, then the response
 * to the provider's request.
 *
 * Besides well-formed outcomes, the http provider's request must carry
 * the match id, mood and user ids exactly, and a room it reports must be
 * the service's room with each user's own token.  LiveKit's CreateRoom
 * request must carry an HS256 JWT allowed to create rooms, and its user
 * tokens must be HS256 JWTs for the right user and room.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "harness.h"

typedef struct RoomInput
{
	FuzzChunk	chunks[FUZZ_MAX_CHUNKS];
	int			nchunks;
	char	   *users[2];
	MMRoomJob  *job;
} RoomInput;

/* The http provider's request must carry the job's values exactly. */
static void
check_http_request(FuzzRequest *req, MMRoomJob *job)
{
	json_t	   *root = fuzz_parse_json(req->body, "room request");
	json_t	   *users = json_object_get(root, "users");

	if (json_integer_value(json_object_get(root, "match_id")) != job->match_id)
		fuzz_fail("room request has the wrong match_id: %s", req->body);
	fuzz_expect_string(root, "mood", job->mood, "room request");
	if (json_array_size(users) != 2)
		fuzz_fail("room request does not list two users: %s", req->body);
	for (int i = 0; i < 2; i++)
	{
		const char *u = json_string_value(json_array_get(users, i));

		if (u == NULL || strcmp(u, job->users[i]) != 0)
			fuzz_fail("room request user %d is \"%s\", expected \"%s\"", i,
					  u ? u : "(missing)", job->users[i]);
	}
	json_decref(root);
}

/* A room the http provider accepted must be what the service sent. */
static void
check_http_room(MMRoomJob *job, FuzzChunk response)
{
	const char *nl = memchr(response.data, '\n', response.len);
	json_t	   *root;
	json_t	   *room;

	if (job->outcome.result != MM_OK)
		return;
	root = json_loadb(nl + 1, response.len - (nl + 1 - response.data), 0, NULL);
	room = json_object_get(root, "room");
	if (json_is_string(room) ?
		strcmp(json_string_value(room), job->room) != 0 :
		strcmp(psprintf("%lld", (long long) json_integer_value(room)),
			   job->room) != 0)
		fuzz_fail("room \"%s\" is not the service's", job->room);
	if (strlen(job->room) == 0 || strlen(job->room) > MM_MAX_ROOM_LEN)
		fuzz_fail("room of %zu bytes accepted", strlen(job->room));
	for (int i = 0; i < 2; i++)
	{
		json_t	   *tok = json_object_get(json_object_get(root, "tokens"),
										  job->users[i]);

		if (!json_is_integer(tok))
			fuzz_expect_string(json_object_get(root, "tokens"), job->users[i],
							   job->tokens[i], "room service token");
		if (strlen(job->tokens[i]) == 0 ||
			strlen(job->tokens[i]) > MM_MAX_TOKEN_LEN)
			fuzz_fail("token of %zu bytes accepted", strlen(job->tokens[i]));
	}
	json_decref(root);
}

/* LiveKit's user tokens must let exactly that user into that room. */
static void
check_livekit_room(MMRoomJob *job)
{
	if (job->outcome.result != MM_OK)
		return;
	if (strcmp(job->room, "match-42") != 0)
		fuzz_fail("LiveKit room is \"%s\"", job->room);
	for (int i = 0; i < 2; i++)
	{
		json_t	   *header;
		json_t	   *claims = fuzz_check_jwt(job->tokens[i], &header,
											mm_livekit_api_secret);
		json_t	   *video = json_object_get(claims, "video");

		fuzz_expect_string(claims, "sub", job->users[i], "LiveKit token");
		fuzz_expect_string(claims, "iss", mm_livekit_api_key, "LiveKit token");
		fuzz_expect_string(video, "room", job->room, "LiveKit token grant");
		if (!json_is_true(json_object_get(video, "roomJoin")))
			fuzz_fail("LiveKit token does not allow joining");
		if (json_integer_value(json_object_get(claims, "exp")) -
			json_integer_value(json_object_get(claims, "nbf")) != mm_room_token_ttl)
			fuzz_fail("LiveKit token lifetime is not matchmaker.room_token_ttl");
		fuzz_expect_string(job->extras[i], "url", mm_livekit_url, "LiveKit extras");
		json_decref(header);
		json_decref(claims);
	}
}

static void
check_livekit_request(FuzzRequest *req)
{
	const char *auth = fuzz_header(req, "Authorization");
	json_t	   *header;
	json_t	   *claims;
	json_t	   *body = fuzz_parse_json(req->body, "CreateRoom request");

	if (auth == NULL || strncmp(auth, "Bearer ", 7) != 0)
		fuzz_fail("CreateRoom request has no bearer token");
	claims = fuzz_check_jwt(auth + 7, &header, mm_livekit_api_secret);
	if (!json_is_true(json_object_get(json_object_get(claims, "video"),
									  "roomCreate")))
		fuzz_fail("CreateRoom token may not create rooms");
	fuzz_expect_string(body, "name", "match-42", "CreateRoom request");
	json_decref(header);
	json_decref(claims);
	json_decref(body);
}

static void
run_input(void *arg)
{
	RoomInput  *in = (RoomInput *) arg;
	char	   *setup = fuzz_text(in->chunks[0]);
	char	   *lines[3] = {setup, "", ""};
	bool		livekit;
	FuzzRequest *req;
	MMRoomJob  *job;

	for (int i = 1; i < 3; i++)
	{
		char	   *nl = strchr(lines[i - 1], '\n');

		if (nl == NULL)
			break;
		*nl = '\0';
		lines[i] = nl + 1;
	}
	livekit = strcmp(lines[0], "livekit") == 0 ||
		strcmp(lines[0], "livekit-token-only") == 0;
	mm_room_url = strcmp(lines[0], "livekit-token-only") == 0 ? "" :
		"http://127.0.0.1:7880";

	job = fuzz_room_job(42, lines[1], lines[2], "happy");
	in->job = job;
	MemoryContextSwitchTo(job->cxt);
	if (livekit)
		mm_room_livekit.start(job);
	else
		mm_room_http.start(job);
	MemoryContextSwitchTo(fuzz_cxt);

	req = fuzz_take_request();
	if (req != NULL && in->nchunks > 1)
	{
		if (livekit)
			check_livekit_request(req);
		else
			check_http_request(req, job);
		fuzz_respond(req, in->chunks[1]);
	}
	if (fuzz_rooms_done > 1)
		fuzz_fail("room job reported done %d times", fuzz_rooms_done);
	if (fuzz_rooms_done == 1 && livekit)
		check_livekit_room(job);
	else if (fuzz_rooms_done == 1 && req != NULL)
		check_http_room(job, in->chunks[1]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	RoomInput	in;

	memset(&in, 0, sizeof(in));
	in.nchunks = fuzz_split(data, size, in.chunks, FUZZ_MAX_CHUNKS);
	(void) fuzz_run(run_input, &in);
	if (in.job)
	{
		for (int i = 0; i < 2; i++)
			json_decref(in.job->extras[i]);
		MemoryContextDelete(in.job->cxt);
	}
	return 0;
}
