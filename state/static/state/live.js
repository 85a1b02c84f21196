// The live state page: store stats and the event stream over the WebSocket, with the staff
// user's session. It resumes from the last revision it saw after any disconnect, and says
// when it is catching up, was cut off for lagging, missed compacted events, or the store was
// restored. Plain JavaScript, no build step.
"use strict";

(() => {
    const config = JSON.parse(document.getElementById("state-live-config").textContent);
    const $ = (id) => document.getElementById(id);
    const KEY_PREFIX = /^[A-Za-z0-9_.:@-]*$/;
    const STATS_EVERY_MS = 5000;

    let socket = null;
    let lastRevision = null;     // everything up to it that we subscribe to has been shown
    let headAtConnect = null;    // the store revision when we (re)connected
    let catchingUp = false;
    let sinceRefused = false;    // the server could not resume from lastRevision
    let prefix = "";
    let attempt = 0;
    let reconnectTimer = null;
    let rowCount = 0;

    // --- display ---------------------------------------------------------------------------

    function setStatus(kind, text) {
        const status = $("live-status");
        status.className = `state-status state-status-${kind}`;
        status.textContent = text;
        status.dataset.state = kind;
    }

    function showPosition() {
        $("live-revision").textContent = lastRevision === null ? "–" : String(lastRevision);
        if (catchingUp && headAtConnect !== null && lastRevision >= headAtConnect) {
            catchingUp = false;
        }
        if (socket && socket.readyState === WebSocket.OPEN) {
            if (catchingUp) {
                setStatus("behind", `catching up: revision ${lastRevision} of ${headAtConnect}`);
            } else {
                setStatus("live", "live");
            }
        }
    }

    function notice(kind, text) {
        const item = document.createElement("li");
        item.className = `state-notice-${kind}`;
        item.dataset.kind = kind;
        const time = document.createElement("time");
        time.textContent = new Date().toLocaleTimeString();
        item.append(time, text);
        const list = $("live-notices");
        list.prepend(item);
        while (list.children.length > 6) list.lastElementChild.remove();
    }

    function compact(value, limit) {
        if (value === null || value === undefined) return "∅";
        const text = JSON.stringify(value);
        return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
    }

    const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

    // old → new, compactly: for two objects, only the names whose values differ.
    function describe(data) {
        const { old_value: before, new_value: after } = data;
        if (isObject(before) && isObject(after)) {
            const parts = [];
            const names = new Set([...Object.keys(before), ...Object.keys(after)]);
            for (const name of names) {
                if (!(name in after)) parts.push(`−${name}`);
                else if (!(name in before)) parts.push(`+${name}: ${compact(after[name], 40)}`);
                else if (JSON.stringify(before[name]) !== JSON.stringify(after[name])) {
                    parts.push(`${name}: ${compact(before[name], 30)} → ${compact(after[name], 30)}`);
                }
            }
            if (parts.length === 0) return "(same value)";
            return parts.length > 4 ? `${parts.slice(0, 4).join(", ")}, … (${parts.length} names)` : parts.join(", ");
        }
        return `${compact(before, 60)} → ${compact(after, 60)}`;
    }

    // The admin's URL quoting of primary keys (django.contrib.admin.utils.quote).
    const adminQuote = (key) => key.replace(/[_:@]/g, (c) => `_${c.charCodeAt(0).toString(16).toUpperCase()}`);

    function cell(row, content, className) {
        const td = row.insertCell();
        if (className) td.className = className;
        if (content instanceof Node) td.append(content);
        else td.textContent = content;
        return td;
    }

    function addRow(data, { reset = false } = {}) {
        const body = $("live-events");
        const empty = body.querySelector(".state-empty");
        if (empty) empty.remove();
        const row = body.insertRow(0);
        row.className = reset ? "state-new-row state-reset-row" : "state-new-row";
        row.dataset.key = data.key || "";
        row.dataset.revision = String(data.revision);
        const when = data.timestamp ? new Date(data.timestamp * 1000) : new Date();
        cell(row, when.toLocaleTimeString());
        cell(row, String(data.revision));
        const op = document.createElement("span");
        op.className = `state-op state-op-${data.op}`;
        op.textContent = data.op;
        cell(row, op);
        if (reset) {
            cell(row, "(whole store)");
            cell(row, "");
            cell(row, "");
            cell(row, `restored from snapshot ${data.snapshot_id ?? "file"}: every key may have changed`, "state-change");
        } else {
            const link = document.createElement("a");
            link.href = data.op === "delete" || data.op === "expire"
                ? config.history_url + encodeURIComponent(data.key)
                : config.entry_url.replace("KEY", adminQuote(data.key));
            link.textContent = data.key;
            cell(row, link);
            cell(row, String(data.version));
            cell(row, data.source || "");
            const change = cell(row, describe(data), "state-change");
            change.title = `${compact(data.old_value, 2000)}\n→\n${compact(data.new_value, 2000)}`;
        }
        row.hidden = !matches(row.dataset.key, reset);
        rowCount += 1;
        while (rowCount > config.max_rows) {
            body.lastElementChild.remove();
            rowCount -= 1;
        }
    }

    const matches = (key, reset) => reset || key.startsWith(prefix);

    function applyFilter() {
        for (const row of $("live-events").rows) {
            if (row.classList.contains("state-empty")) continue;
            row.hidden = !matches(row.dataset.key, row.classList.contains("state-reset-row"));
        }
    }

    // --- store stats -------------------------------------------------------------------------

    function formatBytes(bytes) {
        const units = ["bytes", "KB", "MB", "GB", "TB"];
        let value = bytes;
        let unit = 0;
        while (value >= 1024 && unit < units.length - 1) {
            value /= 1024;
            unit += 1;
        }
        return unit === 0 ? `${value} bytes` : `${value.toFixed(1)} ${units[unit]}`;
    }

    async function refreshStats() {
        try {
            // A bounded wait: a request caught in a server restart must not stall reconnecting.
            const response = await fetch(config.stats_url, {
                credentials: "same-origin",
                headers: { Accept: "application/json" },
                signal: AbortSignal.timeout(4000),
            });
            if (!response.ok) throw new Error(`HTTP ${response.status}`);
            const stats = (await response.json()).data;
            for (const name of ["version", "total_keys", "expiring_keys", "metadata_keys", "event_log_size", "snapshots"]) {
                $(`stat-${name}`).textContent = String(stats[name]);
            }
            $("stat-total_size").textContent = formatBytes(stats.total_size);
            const hot = $("stat-hot_keys");
            hot.replaceChildren();
            stats.hot_keys.forEach((item, index) => {
                if (index) hot.append(", ");
                const code = document.createElement("code");
                code.textContent = item.key;
                hot.append(code, ` (${item.changes})`);
            });
            if (!stats.hot_keys.length) hot.textContent = "none yet";
            $("live-stats-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
            return stats.version;
        } catch (error) {
            $("live-stats-updated").textContent = `stats unavailable (${error.message})`;
            return null;
        }
    }

    // --- the stream --------------------------------------------------------------------------

    function streamUrl() {
        const params = new URLSearchParams();
        params.set("prefixes", (prefix ? [prefix] : config.every_key).join(","));
        if (lastRevision !== null) params.set("since_revision", String(lastRevision));
        const scheme = location.protocol === "https:" ? "wss:" : "ws:";
        return `${scheme}//${location.host}${config.stream_path}?${params}`;
    }

    async function connect() {
        clearTimeout(reconnectTimer);
        if (socket) {
            const old = socket;
            socket = null;
            old.onclose = null;
            old.close();
        }
        setStatus("connecting", lastRevision === null ? "connecting…" : `resuming after revision ${lastRevision}…`);
        const head = await refreshStats();
        if (socket) return;  // another connect() won the race while stats loaded
        const ws = new WebSocket(streamUrl());
        socket = ws;
        ws.onmessage = (event) => {
            if (socket === ws) handle(JSON.parse(event.data));
        };
        ws.onclose = (event) => {
            if (socket !== ws) return;
            socket = null;
            closed(event.code);
        };
        headAtConnect = head;
        sinceRefused = false;
    }

    function closed(code) {
        if (code === 4401) {
            setStatus("error", "logged out");
            notice("error", "The stream refused this session: log in again, then reload the page.");
            return;
        }
        const delay = code === 4008 ? 0 : Math.min(10000, 500 * 2 ** attempt);
        attempt += 1;
        const from = lastRevision === null ? "" : ` and resume after revision ${lastRevision}`;
        setStatus("reconnecting", `disconnected (${code}); reconnecting in ${Math.ceil(delay / 1000)} s${from}`);
        reconnectTimer = setTimeout(connect, delay);
    }

    function handle(message) {
        const data = message.data || {};
        switch (message.type) {
            case "subscribed":
                attempt = 0;
                if (lastRevision === null || sinceRefused) lastRevision = data.revision;
                sinceRefused = false;
                catchingUp = headAtConnect !== null && lastRevision < headAtConnect;
                setStatus("live", "live");
                showPosition();
                break;
            case "state_change":
                lastRevision = data.revision;
                addRow(data);
                showPosition();
                break;
            case "state_reset":
                lastRevision = data.revision;
                addRow({ ...data, op: "restore", key: "" }, { reset: true });
                notice("reset", `The store was restored from snapshot ${data.snapshot_id ?? "(a file)"} at revision ${data.revision}: the changes listed below it are history, not the current state.`);
                refreshStats();
                showPosition();
                break;
            case "progress":
                lastRevision = Math.max(lastRevision ?? 0, data.revision);
                catchingUp = false;
                showPosition();
                break;
            case "error":
                if (data.code === "lagged") {
                    lastRevision = data.last_revision;
                    notice("behind", `This page fell behind the stream after revision ${data.last_revision} and was cut off; resuming from there.`);
                } else if (data.code === "revision_compacted") {
                    sinceRefused = true;
                    notice("behind", `Changes after revision ${lastRevision} are no longer in the event log (the oldest kept is ${data.oldest_revision}): some were missed here. Showing changes from now on.`);
                } else if (data.code === "validation_error" && "revision" in data) {
                    sinceRefused = true;
                    notice("behind", `${data.message} Showing changes from now on.`);
                } else {
                    notice("error", `${data.code}: ${data.message}`);
                }
                break;
            default:
                break;
        }
    }

    // --- controls ------------------------------------------------------------------------------

    let filterTimer = null;
    $("live-prefix").addEventListener("input", (event) => {
        const value = event.target.value.trim();
        const valid = KEY_PREFIX.test(value);
        event.target.classList.toggle("state-invalid", !valid);
        event.target.title = valid ? "" : "Keys hold only A-Z a-z 0-9 _ . : @ -";
        if (!valid) return;
        clearTimeout(filterTimer);
        filterTimer = setTimeout(() => {
            if (value === prefix) return;
            prefix = value;
            applyFilter();
            connect();  // subscribe to the new prefix, resuming from the last revision seen
        }, 300);
    });

    $("live-clear").addEventListener("click", () => {
        $("live-events").replaceChildren();
        rowCount = 0;
    });

    setInterval(refreshStats, STATS_EVERY_MS);
    connect();
})();
