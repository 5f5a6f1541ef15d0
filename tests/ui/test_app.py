"""The tracking UI's pages, requested through the ASGI app (`fanwise.ui.create_app`)."""

from __future__ import annotations

import json
import re

import pytest
from fanwise.core.tracking.index import RunIndex
from fanwise.ui import PAGE_SIZE
from ui_apps import LARGE, PROJECT, SWEEP_CHILDREN, SWEEP_FAILED


def _rows(html: str, table_class: str) -> list[str]:
    table = re.search(rf'<table class="rows {table_class}".*?</table>', html, re.S)
    assert table is not None, f"no table {table_class!r} in the page"
    return re.findall(r"<tr class=\"(\w+)\">", table.group(0))


def _children_links(html: str) -> list[str]:
    return re.findall(r'href="[^"]*/a/([0-9a-f]{64})[^"]*" title=', html)


def test_projects_page_lists_the_project(client):
    page = client.get("/")
    assert page.status_code == 200
    assert f'href="http://testserver/p/{PROJECT}"' in page.text


def test_apps_page_lists_root_apps_newest_first_with_counts_children_hidden(client):
    page = client.get(f"/p/{PROJECT}").text
    assert re.findall(r'/a/([\w-]+)["?]', page) == ["chat-2", "chat-1", "nested", "sweep"]
    assert "4 apps:" in page
    assert '<span class="count completed" data-status="completed">4 completed</span>' in page


def test_apps_page_filters_by_partition_key_status_and_app_id_prefix(client):
    by_key = client.get(f"/p/{PROJECT}", params={"partition_key": "bob"}).text
    assert re.findall(r"/a/([\w-]+)\?", by_key) == ["chat-2", "chat-1"]
    by_prefix = client.get(f"/p/{PROJECT}", params={"prefix": "chat-1"}).text
    assert re.findall(r"/a/([\w-]+)\?", by_prefix) == ["chat-1"]
    failed = client.get(f"/p/{PROJECT}", params={"status": "failed"}).text
    assert "no apps match" in failed


def test_the_filter_forms_empty_fields_filter_nothing(client):
    page = client.get(f"/p/{PROJECT}", params={"prefix": "", "partition_key": "",
                                                "status": ""})
    assert page.status_code == 200
    assert re.findall(r'/a/([\w-]+)["?]', page.text) == ["chat-2", "chat-1", "nested", "sweep"]
    children = client.get(f"/p/{PROJECT}/a/sweep/fanout/0/children",
                          params={"pk": "alice", "status": ""})
    assert children.status_code == 200 and f"shown of {SWEEP_CHILDREN}" in children.text


def test_apps_page_rejects_an_unknown_status_naming_it(client):
    answer = client.get(f"/p/{PROJECT}", params={"status": "finished"})
    assert answer.status_code == 422
    assert "finished" in answer.text


def test_app_page_shows_steps_with_durations_and_the_graph(client):
    page = client.get(f"/p/{PROJECT}/a/sweep", params={"pk": "alice"}).text
    assert _rows(page, "steps") == ["completed", "completed"]
    assert re.search(r"<td>sweep</td>.*?<td>\d+ ms</td>", page, re.S)
    svg = re.search(r'<svg class="graph".*?</svg>', page, re.S).group(0)
    assert re.findall(r"<text [^>]*>(\w+)</text>", svg) == ["sweep", "total"]
    assert svg.count('class="edge"') == 1


def test_fanout_panel_counts_children_by_status(client):
    page = client.get(f"/p/{PROJECT}/a/sweep", params={"pk": "alice"}).text
    panel = re.search(r'<div class="fanout" id="fanout-0">.*', page, re.S).group(0)
    assert f"{SWEEP_CHILDREN} children:" in panel
    counts = dict(re.findall(r'data-part="(\w+)">(\d+)<', panel))
    assert counts == {"done": str(SWEEP_CHILDREN - SWEEP_FAILED), "resumed": "0",
                      "running": "0", "pending": "0", "failed": str(SWEEP_FAILED)}
    assert len(_rows(panel, "children-table")) == PAGE_SIZE


def test_failures_are_grouped_by_exception_and_first_line(client):
    page = client.get(f"/p/{PROJECT}/a/sweep", params={"pk": "alice"}).text
    groups = re.findall(r"<tr><td>(\d+)</td><td>(\w+)</td><td>([^<]*)</td>", page)
    late = sum(1 for n in range(50, SWEEP_CHILDREN) if n % 7 == 3)
    assert groups[0] == (str(late), "ValueError", "bad n")
    assert sum(int(count) for count, _, _ in groups) == SWEEP_FAILED
    assert len(groups) == SWEEP_FAILED - late + 1


def test_failed_only_lists_exactly_the_failed_children(client, storage):
    url = f"/p/{PROJECT}/a/sweep/fanout/0/children"
    page = client.get(url, params={"pk": "alice", "status": "failed"}).text
    assert set(_rows(page, "children-table")) == {"failed"}
    with RunIndex.open(PROJECT, storage) as index:
        failed = [row.app_id for row in index.iter_children("sweep", "alice", status="failed")]
    assert _children_links(page) == failed
    assert f"{SWEEP_FAILED} shown of {SWEEP_FAILED}" in page


def test_children_pages_hold_one_page_of_rows_and_cover_every_child(client):
    url = f"/p/{PROJECT}/a/sweep/fanout/0/children"
    seen: list[str] = []
    cursor = None
    while True:
        params = {"pk": "alice"} | ({} if cursor is None else {"cursor": cursor})
        page = client.get(url, params=params).text
        links = _children_links(page)
        assert len(links) <= PAGE_SIZE
        seen.extend(links)
        found = re.search(r'class="next" hx-get="[^"]*cursor=(\d+)', page)
        if found is None:
            break
        cursor = found.group(1)
    assert len(seen) == len(set(seen)) == SWEEP_CHILDREN


def test_children_sorted_longest_first(client, storage):
    page = client.get(f"/p/{PROJECT}/a/sweep/fanout/0/children",
                      params={"pk": "alice", "sort": "duration"}).text
    with RunIndex.open(PROJECT, storage) as index:
        durations = {row.app_id: row.duration_ms for row in index.iter_children("sweep",
                                                                               "alice")}
    shown = [durations[app_id] for app_id in _children_links(page)]
    assert shown == sorted(durations.values(), reverse=True)[:PAGE_SIZE]


def test_a_child_links_back_to_its_parent_and_its_own_fanout_recurses(client, storage):
    with RunIndex.open(PROJECT, storage) as index:
        child = index.children("nested").rows[0]
        grandchildren = index.children(child.app_id).rows
    page = client.get(f"/p/{PROJECT}/a/{child.app_id}").text
    assert "spawned by" in page and '/a/nested"' in page
    assert '<div class="fanout" id="fanout-0">' in page
    assert _children_links(page) == [row.app_id for row in grandchildren]
    assert "4 children:" in page


def test_step_state_is_diffed_against_the_step_before(client):
    page = client.get(f"/p/{PROJECT}/a/chat-1/steps/1", params={"pk": "bob"}).text
    changes = {key: change for change, key in
               re.findall(r'<tr class="(\w+)"><td>(\w+)</td>', page)}
    assert changes == {
        "done": "added", "prompt": "same", "reply": "same", "transcript": "same"}
    first = client.get(f"/p/{PROJECT}/a/chat-1/steps/0", params={"pk": "bob"}).text
    assert '<tr class="same"><td>reply</td>' in first  # the first step: nothing to diff


def test_large_value_is_previewed_with_a_download_of_the_whole(client):
    page = client.get(f"/p/{PROJECT}/a/chat-1/steps/0", params={"pk": "bob"}).text
    cell = re.search(r"<td>transcript</td>.*?</tr>", page, re.S).group(0)
    assert LARGE not in cell and "xxxx …" in cell
    link = re.search(r'href="([^"]+)" download', cell).group(1)
    whole = client.get(link)
    assert whole.status_code == 200 and json.loads(whole.text) == LARGE
    assert "attachment" in whole.headers["content-disposition"]


def test_unknown_app_project_or_step_is_404_naming_it(client):
    app = client.get(f"/p/{PROJECT}/a/nope")
    assert app.status_code == 404 and "no app 'nope'" in app.text
    project = client.get("/p/elsewhere")
    assert project.status_code == 404 and "no project 'elsewhere'" in project.text
    step = client.get(f"/p/{PROJECT}/a/chat-1/steps/9", params={"pk": "bob"})
    assert step.status_code == 404 and "no step 9" in step.text


def test_the_ui_is_read_only(client):
    assert client.post(f"/p/{PROJECT}/a/chat-1", params={"pk": "bob"}).status_code == 405
    assert client.delete(f"/p/{PROJECT}").status_code == 405


def test_mounted_inside_another_app_its_links_carry_the_mount_path(storage):
    from fanwise.ui import create_app
    from fastapi import FastAPI
    from ui_apps import Client

    host = FastAPI()
    host.mount("/runs", create_app(PROJECT, storage))
    client = Client(host)
    try:
        page = client.get(f"/runs/p/{PROJECT}")
        assert page.status_code == 200
        assert 'href="http://testserver/runs/static/style.css"' in page.text
        link = re.search(r'href="(http://testserver/runs/p/[^"]+/a/sweep\?pk=alice)"',
                         page.text).group(1)
        assert client.get(link).status_code == 200
        assert client.get("/runs/static/htmx.min.js").status_code == 200
    finally:
        client.close()


@pytest.mark.parametrize("project", [None, PROJECT])
def test_a_new_storage_folder_opens_empty(tmp_path, project):
    from fanwise.ui import create_app
    from ui_apps import Client

    client = Client(create_app(project, str(tmp_path)))
    assert client.get("/").status_code == 200
    if project is not None:
        assert "no apps match" in client.get(f"/p/{project}").text
    client.close()
