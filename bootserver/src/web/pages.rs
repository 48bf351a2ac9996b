//! The console's HTML: the frame (navigation, who is logged in) and each page's empty tables,
//! which the page's script fills from the admin API.

use axum::response::Html;
use maud::{html, Markup, DOCTYPE};

use super::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Pcs,
    Overview,
    People,
    Desktops,
    Hosts,
    Analysis,
}

impl Page {
    pub const ALL: [Page; 6] = [Page::Pcs, Page::Overview, Page::People, Page::Desktops, Page::Hosts, Page::Analysis];

    pub fn path(self) -> &'static str {
        match self {
            Page::Pcs => "/pcs",
            Page::Overview => "/overview",
            Page::People => "/people",
            Page::Desktops => "/desktops",
            Page::Hosts => "/hosts",
            Page::Analysis => "/analysis",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Page::Pcs => "PCs",
            Page::Overview => "Overview",
            Page::People => "People",
            Page::Desktops => "Desktops",
            Page::Hosts => "Hosts",
            Page::Analysis => "Analysis",
        }
    }

    /// Pages that show what only `[desktops]` has (hosts, VMs, the memory level).
    pub fn needs_desktops(self) -> bool {
        matches!(self, Page::Overview | Page::Desktops | Page::Hosts | Page::Analysis)
    }

    /// Pages that draw charts, and so load uPlot.
    fn charts(self) -> bool {
        matches!(self, Page::Hosts | Page::Analysis)
    }
}

fn head(title: &str, charts: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · bootserver" }
            link rel="stylesheet" href="/assets/console.css";
            @if charts {
                link rel="stylesheet" href="/assets/uPlot.min.css";
                script src="/assets/uPlot.iife.min.js" {}
            }
        }
    }
}

pub fn login(message: Option<&str>) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head("Log in", false))
                body.login {
                    form method="post" action="/login" {
                        h1 { "bootserver console" }
                        @if let Some(m) = message { p.error #message { (m) } }
                        label { "User name" input #name name="name" autocomplete="username" autofocus required; }
                        label { "Password" input #password name="password" type="password" autocomplete="current-password" required; }
                        button #login type="submit" { "Log in" }
                    }
                }
            }
        }
        .into_string(),
    )
}

/// `page` for `who`, with the navigation to `pages`.
pub fn render(page: Page, who: &Session, pages: &[Page]) -> Html<String> {
    let body = match page {
        Page::Pcs => pcs(),
        Page::Overview => overview(),
        Page::People => people(),
        Page::Desktops => desktops(),
        Page::Hosts => hosts(),
        Page::Analysis => analysis(),
    };
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                (head(page.title(), page.charts()))
                body data-page=(page.title().to_lowercase()) data-can-change=(who.may_change()) {
                    header {
                        strong { "bootserver" }
                        nav {
                            @for p in pages {
                                a href=(p.path()) class=[(*p == page).then_some("here")] { (p.title()) }
                            }
                        }
                        span.who {
                            (who.name) " (" (who.role.as_str()) ") "
                            button #logout type="button" { "Log out" }
                        }
                    }
                    main {
                        h1 { (page.title()) span #live title="live updates" {} }
                        p #status role="status" {}
                        (body)
                    }
                    // Read by the script for the header of every change; a cookie the page
                    // cannot read would not do (another site's form cannot read this either).
                    meta name="csrf-token" content=(who.csrf);
                    script src="/assets/console.js" {}
                }
            }
        }
        .into_string(),
    )
}

fn table(id: &str, columns: &[&str]) -> Markup {
    html! {
        table #(id) {
            thead { tr { @for c in columns { th { (c) } } } }
            tbody {}
        }
    }
}

fn pcs() -> Markup {
    html! {
        (table("pcs", &["MAC", "State", "Connected", "Enrolment", "Address", "Boot stages", "Last seen", "Actions"]))
    }
}

fn overview() -> Markup {
    html! {
        section #summary {}
        h2 { "Memory of each host, by level" }
        div #hosts {}
        h2 { "Latest memory decisions" }
        (table("decisions", &["When", "Event", "Explanation", "Steps"]))
    }
}

fn people() -> Markup {
    html! {
        form #add-user {
            input name="name" placeholder="name" required;
            input name="password" type="password" placeholder="password (8+ characters)" required;
            select name="role" { option value="user" { "user" } option value="readonly" { "readonly" } option value="admin" { "admin" } }
            input name="template" placeholder="template (default)";
            select name="desktop" { option value="persistent" { "persistent" } option value="one-time" { "one-time" } }
            button type="submit" { "Add" }
        }
        (table("users", &["Name", "Role", "Enabled", "Template", "Desktop", "Actions"]))
    }
}

fn desktops() -> Markup {
    html! {
        (table("vms", &["User", "Host", "VM", "Memory", "Level", "Template", "Kind", "Since", "Actions"]))
        p.note { "Desktops stop when their person logs out or their PC leaves. Stop here stops the VM now; \
                  a persistent desktop's data disk stays for the next login." }
    }
}

fn hosts() -> Markup {
    html! {
        label.range {
            "Range "
            select #range {
                option value="1h" selected { "last hour (every sample)" }
                option value="1d" { "last day (every sample)" }
                option value="30d" { "last 30 days (5-minute means)" }
                option value="1y" { "last year (hourly means)" }
            }
        }
        div #charts {}
    }
}

fn analysis() -> Markup {
    html! {
        section #summary {}
        h2 { "By hour of the week (UTC)" }
        div #week-chart.chart {}
        h2 { "Hours with arrivals or desktops in use" }
        (table("hours", &["Hour", "Arrivals", "Per week", "Most in a week", "Desktops in use (mean)", "Most in use", "Pool needed", "Pool configured"]))
        p.note { "Pool needed: the pre-booted VMs that would have met every arrival of that hour without a cold start, \
                  given that a used pool VM is replaced after the configured refill time." }
    }
}
