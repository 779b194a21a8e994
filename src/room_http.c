/*-------------------------------------------------------------------------
 *
 * room_http.c
 *	  Room provider "http": any service that makes a room on request.
 *
 * POST room_url with {"match_id": N, "mood": "...", "users": [a, b]};
 * a 2xx response must be {"room": "...", "tokens": {"a": "...", "b": "..."}}.
 * Any other 2xx body is a service fault, so the attempt is retried like a
 * 5xx and the match fails once attempts run out.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "matchmaker.h"

static void
http_room_answer(const MMHttpResponse *resp, void *arg)
{
	MMRoomJob  *job = (MMRoomJob *) arg;
	json_t	   *root;
	json_t	   *tokens;
	json_error_t jerr;
	const char *room;

	mm_http_classify(resp, &job->outcome);
	if (job->outcome.result != MM_OK)
	{
		mm_room_done(job);
		return;
	}

	root = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL)
	{
		job->outcome.result = MM_RETRY;
		job->outcome.error = psprintf("invalid JSON in room service response: %s",
									  mm_printable_text(jerr.text,
														strlen(jerr.text)));
		mm_room_done(job);
		return;
	}

	tokens = json_object_get(root, "tokens");
	if (!mm_json_get_string(root, "room", &room, MM_MAX_ROOM_LEN))
	{
		job->outcome.result = MM_RETRY;
		job->outcome.error = pstrdup("room service response is missing a valid \"room\"");
	}
	else if (!json_is_object(tokens))
	{
		job->outcome.result = MM_RETRY;
		job->outcome.error = pstrdup("room service response is missing the \"tokens\" object");
	}
	else
	{
		job->room = pstrdup(room);
		for (int i = 0; i < 2; i++)
		{
			const char *tok;

			if (!mm_json_get_string(tokens, job->users[i], &tok,
									MM_MAX_TOKEN_LEN))
			{
				job->outcome.result = MM_RETRY;
				job->outcome.error =
					psprintf("room service response is missing a valid token for user \"%s\"",
							 job->users[i]);
				break;
			}
			job->tokens[i] = pstrdup(tok);
		}
	}
	json_decref(root);
	mm_room_done(job);
}

static void
http_room_start(MMRoomJob *job)
{
	json_t	   *req;

	if (mm_room_url[0] == '\0')
	{
		mm_room_end(job, MM_RETRY, "matchmaker.room_url is not set");
		return;
	}
	req = json_pack("{s:I, s:s, s:[s, s]}",
					"match_id", (json_int_t) job->match_id,
					"mood", job->mood,
					"users", job->users[0], job->users[1]);
	mm_http_post(mm_room_url, mm_json_dump(req), NULL, http_room_answer, job);
}

const MMRoomProvider mm_room_http = {
	.name = "http",
	.make_plan = NULL,
	.start = http_room_start,
	.tick = NULL,
	.reset = NULL,
	.close = NULL,
};
