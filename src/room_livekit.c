/*-------------------------------------------------------------------------
 *
 * room_livekit.c
 *	  Room provider "livekit": access tokens, and CreateRoom when asked.
 *
 * Each match gets the room "match-<match id>", so a retry or a restart
 * names the same room.  Each user gets an HS256 access token signed with
 * the API secret: identity (sub) is the user id, and the video grant lets
 * them join that room, publish and subscribe.  nbf and exp are always set,
 * since LiveKit rejects tokens without exp.
 *
 * LiveKit creates a room when its first participant joins.  When
 * matchmaker.room_url is set, the worker creates the room first through
 * the RoomService CreateRoom Twirp endpoint, for two participants and a
 * short empty timeout, so that an abandoned room closes soon.  A room
 * that already exists (409 already_exists) counts as created.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "matchmaker.h"

#define LIVEKIT_EMPTY_TIMEOUT_S		60
#define LIVEKIT_SERVER_TOKEN_TTL_S	600

static char *
room_name(int64 match_id)
{
	return psprintf("match-" INT64_FORMAT, match_id);
}

/* An access token for one user of one room. */
static char *
user_token(const char *room, const char *user, int64 now)
{
	return mm_jwt_sign_hs256(json_pack("{s:s, s:s}", "alg", "HS256", "typ", "JWT"),
							 json_pack("{s:s, s:s, s:I, s:I, s:{s:s, s:b, s:b, s:b}}",
									   "iss", mm_livekit_api_key,
									   "sub", user,
									   "nbf", (json_int_t) now,
									   "exp", (json_int_t) (now + mm_room_token_ttl),
									   "video",
									   "room", room,
									   "roomJoin", 1,
									   "canPublish", 1,
									   "canSubscribe", 1),
							 mm_livekit_api_secret);
}

/* Fill in the room, the tokens and what the app needs to connect. */
static void
finish_job(MMRoomJob *job)
{
	int64		now = (int64) time(NULL);

	job->room = room_name(job->match_id);
	for (int i = 0; i < 2; i++)
	{
		job->tokens[i] = user_token(job->room, job->users[i], now);
		job->extras[i] = mm_livekit_url[0] ?
			json_pack("{s:s}", "url", mm_livekit_url) : NULL;
	}
	job->outcome.result = MM_OK;
	mm_room_done(job);
}

static void
create_answer(const MMHttpResponse *resp, void *arg)
{
	MMRoomJob  *job = (MMRoomJob *) arg;

	mm_http_classify(resp, &job->outcome);
	if (job->outcome.result == MM_OK || resp->status == 409)
	{
		finish_job(job);
		return;
	}
	if (resp->curl_code == 0)
	{
		json_t	   *root = json_loadb(resp->body, resp->body_len, 0, NULL);
		const char *code = json_string_value(json_object_get(root, "code"));
		const char *msg = json_string_value(json_object_get(root, "msg"));

		if (code != NULL)
		{
			job->outcome.error = psprintf("LiveKit CreateRoom failed: %s (HTTP %ld)%s%s",
										  mm_clip_utf8(code, 50), resp->status,
										  msg ? ": " : "",
										  msg ? mm_clip_utf8(msg, 200) : "");
			/* Twirp sends rate limiting as 403 resource_exhausted */
			if (strcmp(code, "resource_exhausted") == 0 ||
				strcmp(code, "unavailable") == 0)
				job->outcome.result = MM_RETRY;
		}
		json_decref(root);
	}
	mm_room_done(job);
}

static void
livekit_start(MMRoomJob *job)
{
	int64		now = (int64) time(NULL);
	char	   *server_token;
	const char *headers[2];
	MMHttpSpec	spec = {0};

	job->outcome.retry_after_ms = -1;
	if (mm_livekit_api_key[0] == '\0' || mm_livekit_api_secret[0] == '\0')
	{
		job->outcome.result = MM_RETRY;
		job->outcome.error = pstrdup("matchmaker.livekit_api_key and matchmaker.livekit_api_secret must be set");
		mm_room_done(job);
		return;
	}
	if (mm_room_url[0] == '\0')
	{
		finish_job(job);
		return;
	}

	server_token = mm_jwt_sign_hs256(json_pack("{s:s, s:s}", "alg", "HS256", "typ", "JWT"),
									 json_pack("{s:s, s:I, s:I, s:{s:b}}",
											   "iss", mm_livekit_api_key,
											   "nbf", (json_int_t) now,
											   "exp", (json_int_t) (now + LIVEKIT_SERVER_TOKEN_TTL_S),
											   "video", "roomCreate", 1),
									 mm_livekit_api_secret);
	headers[0] = psprintf("Authorization: Bearer %s", server_token);
	headers[1] = NULL;
	spec.url = psprintf("%s/twirp/livekit.RoomService/CreateRoom", mm_room_url);
	spec.body = mm_json_dump(json_pack("{s:s, s:i, s:i}",
									   "name", room_name(job->match_id),
									   "empty_timeout", LIVEKIT_EMPTY_TIMEOUT_S,
									   "max_participants", 2));
	spec.headers = headers;
	mm_http_request(&spec, create_answer, job);
}

const MMRoomProvider mm_room_livekit = {
	.name = "livekit",
	.make_plan = NULL,
	.start = livekit_start,
	.tick = NULL,
	.reset = NULL,
	.close = NULL,
};
