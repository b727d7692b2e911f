"""A view that runs a crew inside a request, for the Django integration test."""

from __future__ import annotations

from crewai import Agent, Crew, Task
from django.http import HttpRequest, JsonResponse
from django.urls import path

from tests.crewai.fakes import FINAL_ANSWER, Reply, ScriptedLLM
from weckr_core import WeckrCapError
from weckr_crewai import WeckrCrew

#: The scripted LLM of each request, so a test can see what the "provider" billed.
LLMS: list[ScriptedLLM] = []


def brief(role: str | None, index: int) -> Reply:
    if role == "researcher":
        return Reply(FINAL_ANSWER.format(answer="notes"), 1_200, 150, cached_tokens=400)
    return Reply(FINAL_ANSWER.format(answer="brief"), 800, 300, reasoning_tokens=60)


def research(request: HttpRequest) -> JsonResponse:
    llm = ScriptedLLM(brief)
    LLMS.append(llm)
    researcher = Agent(role="researcher", goal="Find facts", backstory="Careful.", llm=llm)
    writer = Agent(role="writer", goal="Write", backstory="Clear.", llm=llm)
    crew = Crew(
        agents=[researcher, writer],
        tasks=[
            Task(
                name="research",
                description="Research {topic}",
                expected_output="Notes",
                agent=researcher,
            ),
            Task(
                name="write",
                description="Write about {topic}",
                expected_output="A brief",
                agent=writer,
            ),
        ],
    )
    weckr = WeckrCrew(feature="research")
    weckr.attach(crew)
    try:
        crew.kickoff(inputs={"topic": request.GET.get("topic", "tides")})
    except WeckrCapError as error:
        return JsonResponse({"stopped": error.name, "account": error.account_id}, status=402)
    run = weckr.last_run
    return JsonResponse({"run_id": run.run_id if run else None})


urlpatterns = [path("research/", research)]
