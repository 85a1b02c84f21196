// The entry form's JSON fields: a "Format" button and a syntax check as you type. The
// server checks everything again on save; this only saves a round trip for typos.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
    for (const area of document.querySelectorAll("textarea.state-json-editor")) {
        const tools = document.createElement("div");
        tools.className = "state-json-tools";
        const format = document.createElement("button");
        format.type = "button";
        format.className = "button";
        format.textContent = "Format JSON";
        const status = document.createElement("span");
        status.className = "state-json-status";
        tools.append(format, status);
        area.after(tools);

        const check = () => {
            const text = area.value.trim();
            if (!text) {
                area.classList.remove("state-json-invalid");
                status.classList.remove("state-json-invalid");
                status.textContent = "";
                return null;
            }
            try {
                const value = JSON.parse(text);
                area.classList.remove("state-json-invalid");
                status.classList.remove("state-json-invalid");
                status.textContent = `valid JSON, ${new Blob([JSON.stringify(value)]).size} bytes compact`;
                return value;
            } catch (error) {
                area.classList.add("state-json-invalid");
                status.classList.add("state-json-invalid");
                status.textContent = error.message;
                return undefined;
            }
        };
        format.addEventListener("click", () => {
            const value = check();
            if (value !== undefined && value !== null) area.value = JSON.stringify(value, null, 2);
        });
        area.addEventListener("input", check);
        check();
    }
});
