//! What the helpdesk reads and names: listings as tables with ISO 8601 times (or JSON lines
//! with `--json`), and the one request someone means by its request ID, the recovery ID the
//! user reads out, or the host name.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{self, Route};
use crate::cmd::{CmdResult, Exit, Failure};
use crate::escrow::https::Https;

/// A row of one of the administrator listings.
pub trait Row: Serialize + DeserializeOwned {
    const ROUTE: Route;
    /// What the rows are, for "No … ." and in messages.
    const WHAT: &'static str;
    const HEAD: &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

pub use crate::api::iso8601 as time;

fn or_dash(text: Option<&str>) -> String {
    text.unwrap_or("-").to_string()
}

impl Row for api::MachineRow {
    const ROUTE: Route = api::ADMIN_MACHINES;
    const WHAT: &'static str = "machines";
    const HEAD: &'static [&'static str] = &[
        "MACHINE",
        "HOST",
        "MACHINE-ID",
        "CLIENT-ID",
        "JOINED",
        "PACKETS",
        "REPORTED",
        "HEALTH",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.machine.clone(),
            self.host.clone(),
            self.machine_id.clone(),
            or_dash(self.client_id.as_deref()),
            time(self.created),
            self.packets.to_string(),
            or_dash(self.last_report.map(time).as_deref()),
            self.health.clone(),
        ]
    }
}

impl Row for api::PacketRow {
    const ROUTE: Route = api::ADMIN_PACKETS;
    const WHAT: &'static str = "escrow packets";
    const HEAD: &'static [&'static str] = &["PACKET", "HOST", "VOLUME", "ESCROWED", "OBSOLETE"];
    fn cells(&self) -> Vec<String> {
        vec![
            self.packet.clone(),
            self.host.clone(),
            self.volume_uuid.clone(),
            time(self.created),
            if self.obsolete { "yes" } else { "no" }.into(),
        ]
    }
}

impl Row for api::RequestRow {
    const ROUTE: Route = api::ADMIN_REQUESTS;
    const WHAT: &'static str = "recovery requests";
    const HEAD: &'static [&'static str] = &[
        "REQUEST",
        "RECOVERY-ID",
        "HOST",
        "VOLUME",
        "REQUESTED",
        "STATE",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.request.clone(),
            self.recovery_id.clone(),
            self.host.clone(),
            self.volume_uuid.clone(),
            time(self.created),
            self.state.clone(),
        ]
    }
}

impl Row for api::RestoreRow {
    const ROUTE: Route = api::ADMIN_RESTORES;
    const WHAT: &'static str = "restore requests";
    const HEAD: &'static [&'static str] = &[
        "REQUEST",
        "RESTORE-ID",
        "HOST",
        "CLIENT-ID",
        "REQUESTED",
        "STATE",
        "EXPIRES",
        "TPM-PROVEN",
    ];
    fn cells(&self) -> Vec<String> {
        vec![
            self.request.clone(),
            self.restore_id.clone(),
            or_dash(self.host.as_deref()),
            self.client_id.clone(),
            time(self.created),
            self.state.clone(),
            time(self.expires),
            if self.tpm_proven { "yes" } else { "no" }.into(),
        ]
    }
}

/// Every row of a listing.
pub fn fetch<R: Row>(s: &Https) -> Result<Vec<R>, Failure> {
    Ok(s.get_json(&R::ROUTE.path(&[]))?)
}

/// Prints `rows`: a table, or one JSON object per line. An empty listing says so (on
/// standard error, so that scripts reading the JSON see nothing).
pub fn print<R: Row>(rows: &[R], json: bool) -> CmdResult {
    if rows.is_empty() {
        eprintln!("No {}.", R::WHAT);
        return Ok(());
    }
    if json {
        for row in rows {
            let line = serde_json::to_string(row)
                .map_err(|e| Failure::new(Exit::Failure, e.to_string()))?;
            println!("{line}");
        }
        return Ok(());
    }
    print!(
        "{}",
        table(R::HEAD, &rows.iter().map(Row::cells).collect::<Vec<_>>())
    );
    Ok(())
}

/// Columns as wide as their widest cell, two spaces apart; the last one is not padded.
fn table(head: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head: Vec<String> = head.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A request someone can name: by its ID, by the short ID its user reads out, by host.
pub trait Named: Row {
    /// The `lifeline-server admin` listing that shows them.
    const LISTING: &'static str;
    fn id(&self) -> &str;
    fn short_id(&self) -> &str;
    fn host(&self) -> Option<&str>;
    /// Still waiting for an administrator.
    fn waiting(&self) -> bool;
    /// What else the approver should see that the table leaves out.
    fn detail(&self) -> Option<String> {
        None
    }
}

impl Named for api::RequestRow {
    const LISTING: &'static str = "requests";
    fn id(&self) -> &str {
        &self.request
    }
    fn short_id(&self) -> &str {
        &self.recovery_id
    }
    fn host(&self) -> Option<&str> {
        Some(&self.host)
    }
    fn waiting(&self) -> bool {
        self.state == "pending"
    }
    fn detail(&self) -> Option<String> {
        Some(format!("machine-id: {}", self.machine_id))
    }
}

impl Named for api::RestoreRow {
    const LISTING: &'static str = "restores";
    fn id(&self) -> &str {
        &self.request
    }
    fn short_id(&self) -> &str {
        &self.restore_id
    }
    fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }
    fn waiting(&self) -> bool {
        self.state == "pending" || self.state == "challenged"
    }
}

/// The one row `given` names: the request with that ID, else the one waiting request with
/// that recovery (or restore) ID or host. Several, or none waiting, is refused with the
/// candidates shown.
pub fn pick<'a, R: Named>(rows: &'a [R], given: &str) -> Result<&'a R, Failure> {
    let given = given.trim();
    if let Some(row) = rows.iter().find(|r| r.id() == given) {
        return Ok(row);
    }
    let matching: Vec<&R> = rows
        .iter()
        .filter(|r| {
            r.short_id().eq_ignore_ascii_case(given)
                || r.host().is_some_and(|h| h.eq_ignore_ascii_case(given))
        })
        .collect();
    let waiting: Vec<&R> = matching.iter().copied().filter(|r| r.waiting()).collect();
    let shown = |rows: &[&R]| {
        let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells()).collect();
        table(R::HEAD, &cells)
    };
    match (waiting.as_slice(), matching.as_slice()) {
        ([one], _) => Ok(one),
        ([], []) => Err(Failure::new(
            Exit::NotApplicable,
            format!("no {} match '{given}'", R::WHAT),
        )
        .todo(format!(
            "check the ID with the caller, or list them: lifeline-server admin {}",
            R::LISTING
        ))),
        ([], some) => Err(Failure::new(
            Exit::NotApplicable,
            format!(
                "none of the {} matching '{given}' is waiting for approval:\n{}",
                R::WHAT,
                shown(some).trim_end()
            ),
        )
        .todo("the machine asks again when it needs to; approve the new request")),
        (several, _) => Err(Failure::usage(format!(
            "'{given}' matches {} waiting {}:\n{}",
            several.len(),
            R::WHAT,
            shown(several).trim_end()
        ))
        .todo("name one by its request ID (the first column)")),
    }
}

/// Says on standard error which request is about to be approved.
pub fn announce<R: Named>(row: &R) {
    let cells = row.cells();
    let described: Vec<String> = R::HEAD
        .iter()
        .zip(&cells)
        .map(|(h, c)| format!("{}: {c}", h.to_ascii_lowercase()))
        .chain(row.detail())
        .collect();
    eprintln!("Approving {}", described.join(", "));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, recovery_id: &str, host: &str, state: &str) -> api::RequestRow {
        api::RequestRow {
            request: id.into(),
            recovery_id: recovery_id.into(),
            host: host.into(),
            machine_id: "m".into(),
            volume_uuid: "v".into(),
            created: 1_795_000_000,
            state: state.into(),
        }
    }

    #[test]
    fn a_request_is_named_by_id_recovery_id_or_host_and_ambiguity_is_refused() {
        let rows = vec![
            request("r1", "3d12-2535", "laptop", "used"),
            request("r2", "3d12-2535", "laptop", "pending"),
            request("r3", "77aa-0101", "laptop", "pending"),
            request("r4", "99bb-0202", "desk", "approved"),
        ];
        assert_eq!(pick(&rows, "r1").unwrap().request, "r1");
        assert_eq!(pick(&rows, "3D12-2535").unwrap().request, "r2");
        let two = pick(&rows, "laptop").unwrap_err();
        assert_eq!(two.code, Exit::Usage);
        assert!(
            two.what.contains("r2") && two.what.contains("r3"),
            "{}",
            two.what
        );
        let done = pick(&rows, "desk").unwrap_err();
        assert!(
            done.what.contains("waiting") && done.what.contains("r4"),
            "{}",
            done.what
        );
        let none = pick(&rows, "0000-0000").unwrap_err();
        assert_eq!(none.code, Exit::NotApplicable);
    }

    #[test]
    fn tables_align_columns_and_show_times_in_iso_8601() {
        let text = table(
            api::RequestRow::HEAD,
            &[request("r1", "3d12-2535", "a-long-host-name", "pending").cells()],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("HOST"), lines[1].find("a-long-host-name"));
        assert!(lines[1].contains("2026-11-18T11:06:40Z"), "{}", lines[1]);
        assert!(lines[1].ends_with("pending"));
    }
}
