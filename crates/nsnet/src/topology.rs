//! `nsnet topology`: the library's picture ([`Topology`]) drawn as a text tree, a Graphviz dot graph, or a
//! self-contained SVG laid out here (host on top, networks below it, sandboxes below them), or printed as
//! JSON. Anything broken is marked at once: `✗ BROKEN` (red on a terminal) in text, red dashed in dot and
//! SVG.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::{bail, Result};
use nsnet_core::model::or_none;
use nsnet_core::ops::Nsnet;
use nsnet_core::topology::{EndpointNode, NetworkNode, SandboxNode, State, Topology};

/// How `nsnet topology` prints.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Format {
    /// A tree, one line per thing.
    Text,
    /// A Graphviz graph (`dot -Tpng`).
    Dot,
    /// A picture, drawn by nsnet itself.
    Svg,
}

/// `nsnet topology [NAME]`.
pub fn run(
    nsnet: &Nsnet,
    name: Option<&str>,
    format: Option<Format>,
    json: bool,
) -> Result<ExitCode> {
    if json && format.is_some() {
        bail!("--json and --format are two ways to print; give one of them");
    }
    let all = nsnet.topology()?;
    let t = match name {
        None => all,
        Some(name) => match all.only(name) {
            Some(t) => t,
            None => bail!(
                "no network or sandbox named '{name}'; `nsnet network ls` and `nsnet ls` list them"
            ),
        },
    };
    if json {
        return crate::show::json(&t);
    }
    match format.unwrap_or(Format::Text) {
        Format::Text => {
            // Colour on a terminal, unless the user asked for none (the NO_COLOR convention).
            let colour = std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            print!("{}", text(&t, colour));
        }
        Format::Dot => print!("{}", dot(&t)),
        Format::Svg => print!("{}", svg(&t)),
    }
    Ok(ExitCode::SUCCESS)
}

const BROKEN: &str = "✗ BROKEN";

/// One line of the tree and the lines under it.
struct Node {
    line: String,
    children: Vec<Node>,
}

fn leaf(line: String) -> Node {
    Node {
        line,
        children: vec![],
    }
}

fn draw(node: &Node, prefix: &str, out: &mut String) {
    for (i, child) in node.children.iter().enumerate() {
        let last = i + 1 == node.children.len();
        let (branch, next) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        let _ = writeln!(out, "{prefix}{branch}{}", child.line);
        draw(child, &format!("{prefix}{next}"), out);
    }
}

/// The marker after an item: nothing when it is fine, `✗ BROKEN: why` (red on a terminal), `(removing)`,
/// or `? not checked`.
fn mark(state: State, problems: &[String], colour: bool) -> String {
    match state {
        State::Ok => String::new(),
        State::Removing => "  (removing)".into(),
        State::Unknown => "  ? not checked".into(),
        State::Broken => {
            let text = format!("{BROKEN}: {}", problems.join("; "));
            if colour {
                format!("  \x1b[1;31m{text}\x1b[0m")
            } else {
                format!("  {text}")
            }
        }
    }
}

/// The network's settings in a few words: `nat, isolated, fast path`.
fn traits(n: &NetworkNode) -> String {
    let mut words = vec![if n.internal {
        "internal".to_string()
    } else {
        n.gateway_mode.clone()
    }];
    if n.isolate {
        words.push("isolated".into());
    }
    if n.fast_path {
        words.push("fast path".into());
    }
    match n.ipv6 {
        Some(v6) if v6.nat && !n.internal => words.push("nat66".into()),
        Some(v6) if !v6.nat => words.push("no nat66".into()),
        _ => {}
    }
    words.join(", ")
}

/// The uplink's addresses: IPv4 ones, then global IPv6 ones.
fn uplink_addresses(u: &nsnet_core::topology::Uplink) -> String {
    let addrs: Vec<String> = u
        .addresses
        .iter()
        .map(ToString::to_string)
        .chain(u.addresses6.iter().map(ToString::to_string))
        .collect();
    addrs.join(" ")
}

/// The network's subnets and gateways, one `SUBNET gateway GW` per family it has (IPv4 first); an IPv4-only
/// network's as always.
fn subnets(n: &NetworkNode) -> Vec<String> {
    let mut out = Vec::new();
    if n.subnet.is_some() || n.ipv6.is_none() {
        out.push(format!(
            "{} gateway {}",
            or_none(n.subnet),
            or_none(n.gateway)
        ));
    }
    if let Some(v6) = n.ipv6 {
        out.push(format!(
            "{} gateway {} ({})",
            v6.subnet, v6.gateway, v6.link_local
        ));
    }
    out
}

/// A peer's IPv6 block with its route's next hop and the neighbour entry binding it:
/// `fd00:10:244:1::/64 via fd00:10:244:1:: (neighbour 0e:6e:...)`.
fn peer6(p: &nsnet_core::topology::PeerNode) -> Option<String> {
    let block = p.subnet6?;
    Some(match (p.via6, p.mac6) {
        (Some(via), Some(mac)) => format!("{block} via {via} (neighbour {mac})"),
        _ => format!("{block} (no MAC to bind it to yet)"),
    })
}

/// A peer's box or node: `host UNDERLAY`, its block, its IPv6 block with the route's next hop.
fn peer_lines(p: &nsnet_core::topology::PeerNode) -> Vec<String> {
    let mut lines = vec![format!("host {}", p.underlay), p.subnet.to_string()];
    lines.extend(peer6(p));
    lines
}

/// The endpoint's addresses: its IPv4 one, then its global and link-local IPv6 ones (`none` with neither).
fn addresses(e: &EndpointNode) -> String {
    let mut out: Vec<String> = e.address.iter().map(ToString::to_string).collect();
    if let Some(v6) = e.ipv6 {
        out.push(v6.address.to_string());
        out.push(format!("{}/64", v6.link_local));
    }
    if out.is_empty() {
        out.push(or_none(e.address));
    }
    out.join(" ")
}

fn endpoint_line(e: &EndpointNode) -> String {
    format!(
        "{} {} {} <-veth-> {}{}",
        e.interface,
        addresses(e),
        e.mac,
        e.host_interface,
        if e.default_route {
            "  (default route)"
        } else {
            ""
        }
    )
}

/// The text tree: the host, each network with its sandboxes, sandboxes on no network, strays; then the
/// broken items again, one per line, so none is missed in a long picture.
pub fn text(t: &Topology, colour: bool) -> String {
    let mut out = String::new();
    let uplink = match &t.host.uplink {
        Some(u) => {
            let gateways: Vec<String> = u
                .gateway
                .iter()
                .map(ToString::to_string)
                .chain(u.gateway6.iter().map(ToString::to_string))
                .collect();
            let via = if gateways.is_empty() {
                String::new()
            } else {
                format!(" via {}", gateways.join(", "))
            };
            format!("uplink {} {}{via}", u.interface, uplink_addresses(u))
        }
        None => "no default route".into(),
    };
    let _ = writeln!(out, "host {}  {uplink}", t.host.name);
    let mut root = Node {
        line: String::new(),
        children: vec![],
    };
    for n in &t.networks {
        let mut net = leaf(format!(
            "network {}  {} {}  {}  {}{}",
            n.name,
            n.driver,
            n.interface,
            subnets(n).join(", "),
            traits(n),
            mark(n.state, &n.problems, colour)
        ));
        if let Some(o) = &n.overlay {
            let cluster6 = o.cluster6.map(|c| format!(" and {c}")).unwrap_or_default();
            let mut overlay = leaf(format!(
                "overlay {} vni {} by {}, cluster {}{cluster6}",
                o.backend, o.vni, o.device, o.cluster
            ));
            for p in &o.peers {
                overlay.children.push(leaf(format!(
                    "host at {} has {}{}{}",
                    p.underlay,
                    p.subnet,
                    peer6(p).map(|l| format!(" and {l}")).unwrap_or_default(),
                    mark(p.state, &p.problems, colour)
                )));
            }
            net.children.push(overlay);
        }
        for s in &t.sandboxes {
            let eps: Vec<&EndpointNode> =
                s.endpoints.iter().filter(|e| e.network == n.name).collect();
            if !eps.is_empty() {
                net.children.push(sandbox_node(s, &eps, colour));
            }
        }
        root.children.push(net);
    }
    let lone: Vec<&SandboxNode> = t
        .sandboxes
        .iter()
        .filter(|s| s.endpoints.is_empty())
        .collect();
    if !lone.is_empty() {
        let mut none = leaf("on no network".into());
        for s in lone {
            none.children.push(sandbox_node(s, &[], colour));
        }
        root.children.push(none);
    }
    for s in &t.strays {
        root.children.push(leaf(format!(
            "{} {}{}",
            s.kind,
            s.name,
            mark(
                State::Broken,
                &["carries this state dir's tag, but no record owns it".into()],
                colour
            )
        )));
    }
    draw(&root, "", &mut out);
    if !t.broken.is_empty() {
        let head = format!("{BROKEN}: {}", t.broken.len());
        if colour {
            let _ = writeln!(out, "\n\x1b[1;31m{head}\x1b[0m");
        } else {
            let _ = writeln!(out, "\n{head}");
        }
        for b in &t.broken {
            let _ = writeln!(out, "  {b}");
        }
        let _ = writeln!(
            out,
            "`nsnet gc` re-creates missing links, releases sandboxes whose namespace is gone and deletes \
             what no record owns"
        );
    }
    for note in &t.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

fn sandbox_node(s: &SandboxNode, eps: &[&EndpointNode], colour: bool) -> Node {
    let mut node = leaf(format!(
        "sandbox {}  {}{}{}",
        s.name,
        s.netns.display(),
        if s.owned { "" } else { " (attached)" },
        mark(s.state, &s.problems, colour)
    ));
    for e in eps {
        let mut ep = leaf(format!(
            "{}{}",
            endpoint_line(e),
            mark(e.state, &e.problems, colour)
        ));
        for p in &e.ports {
            ep.children.push(leaf(format!(
                "port {}{}",
                p.describe(),
                mark(p.state, &p.problems, colour)
            )));
        }
        node.children.push(ep);
    }
    node
}

/// A dot string: quoted, `"` and `\` escaped, lines joined by dot's `\n`.
fn dot_str(lines: &[String]) -> String {
    let text: Vec<String> = lines
        .iter()
        .map(|l| l.replace('\\', "\\\\").replace('"', "\\\""))
        .collect();
    format!("\"{}\"", text.join("\\n"))
}

/// Red and dashed for a broken item; grey and dotted while it is being removed.
fn dot_style(state: State) -> &'static str {
    match state {
        State::Broken => ", color=red, fontcolor=red, style=dashed, penwidth=2",
        State::Removing | State::Unknown => ", color=gray50, fontcolor=gray50, style=dotted",
        State::Ok => "",
    }
}

fn with_problems(mut lines: Vec<String>, state: State, problems: &[String]) -> Vec<String> {
    if state == State::Broken {
        lines.extend(problems.iter().map(|p| format!("✗ {p}")));
    }
    lines
}

/// A network's box in dot and SVG: its name, interface and IPv4 subnet, gateway, the IPv6 side, traits.
fn network_lines(n: &NetworkNode) -> Vec<String> {
    let mut lines = vec![format!("network {} ({})", n.name, n.driver)];
    if n.subnet.is_some() || n.ipv6.is_none() {
        lines.push(format!("{} {}", n.interface, or_none(n.subnet)));
        lines.push(format!("gateway {}", or_none(n.gateway)));
    } else {
        lines.push(n.interface.clone());
    }
    if let Some(v6) = n.ipv6 {
        lines.push(v6.subnet.to_string());
        lines.push(format!("gateway {} {}", v6.gateway, v6.link_local));
    }
    lines.push(traits(n));
    lines
}

/// A veth pair's edge label in dot: its ends, addresses and MAC.
fn endpoint_lines(e: &EndpointNode) -> Vec<String> {
    let mut lines = vec![format!("{} <-> {}", e.host_interface, e.interface)];
    if e.address.is_some() || e.ipv6.is_none() {
        lines.push(or_none(e.address));
    }
    if let Some(v6) = e.ipv6 {
        lines.push(v6.address.to_string());
    }
    lines.push(e.mac.to_string());
    lines
}

/// The graph in Graphviz's language: boxes for the host, networks and sandboxes, edges for the bridges and
/// the veth pairs, dotted edges for published ports.
pub fn dot(t: &Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "graph nsnet {{");
    let _ = writeln!(out, "  graph [rankdir=TB, fontname=\"monospace\"];");
    let _ = writeln!(
        out,
        "  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    let _ = writeln!(out, "  edge [fontname=\"monospace\", fontsize=9];");
    let mut host = vec![format!("host {}", t.host.name)];
    if let Some(u) = &t.host.uplink {
        host.push(format!("uplink {} {}", u.interface, uplink_addresses(u)));
    }
    let _ = writeln!(out, "  host [label={}, shape=box3d];", dot_str(&host));
    for n in &t.networks {
        let id = dot_str(&[format!("net:{}", n.name)]);
        let lines = with_problems(network_lines(n), n.state, &n.problems);
        let _ = writeln!(
            out,
            "  {id} [label={}{}];",
            dot_str(&lines),
            dot_style(n.state)
        );
        let _ = writeln!(
            out,
            "  host -- {id} [label={}{}];",
            dot_str(std::slice::from_ref(&n.interface)),
            dot_style(n.state)
        );
        for p in n
            .overlay
            .iter()
            .flat_map(|o| o.peers.iter().map(move |p| (o, p)))
        {
            let (o, p) = p;
            let pid = dot_str(&[format!("peer:{}:{}", n.name, p.subnet)]);
            let lines = with_problems(peer_lines(p), p.state, &p.problems);
            let _ = writeln!(
                out,
                "  {pid} [label={}, shape=box3d{}];",
                dot_str(&lines),
                dot_style(p.state)
            );
            let _ = writeln!(
                out,
                "  {id} -- {pid} [label={}{}];",
                dot_str(&[format!("{} {}", o.backend, o.device)]),
                match p.state {
                    State::Ok => ", style=bold",
                    other => dot_style(other),
                }
            );
        }
    }
    for s in &t.sandboxes {
        let id = dot_str(&[format!("sb:{}", s.name)]);
        let lines = with_problems(
            vec![format!("sandbox {}", s.name), s.netns.display().to_string()],
            s.state,
            &s.problems,
        );
        let _ = writeln!(
            out,
            "  {id} [label={}, shape=component{}];",
            dot_str(&lines),
            dot_style(s.state)
        );
        for e in &s.endpoints {
            let net = dot_str(&[format!("net:{}", e.network)]);
            let lines = with_problems(endpoint_lines(e), e.state, &e.problems);
            let _ = writeln!(
                out,
                "  {net} -- {id} [label={}{}];",
                dot_str(&lines),
                dot_style(e.state)
            );
            for p in &e.ports {
                let lines = with_problems(vec![p.describe()], p.state, &p.problems);
                let style = match p.state {
                    State::Ok => ", style=dotted, color=blue, fontcolor=blue",
                    other => dot_style(other),
                };
                let _ = writeln!(
                    out,
                    "  host -- {id} [label={}, constraint=false{style}];",
                    dot_str(&lines)
                );
            }
        }
    }
    for s in &t.strays {
        let id = dot_str(&[format!("stray:{}:{}", s.kind, s.name)]);
        let lines = [
            format!("{} {}", s.kind, s.name),
            "✗ no record owns it".to_string(),
        ];
        let _ = writeln!(
            out,
            "  {id} [label={}{}];",
            dot_str(&lines),
            dot_style(State::Broken)
        );
    }
    let _ = writeln!(out, "}}");
    out
}

/// Text in SVG: `&`, `<`, `>` and quotes escaped.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// Monospace text metrics: a character is 7 px wide at 12 px, a line 16 px high.
const CHAR_W: usize = 7;
const LINE_H: usize = 16;
const PAD: usize = 8;
const GAP: usize = 30;
const ROW_GAP: usize = 70;

/// A box of the picture: where it is, what it says, how it looks.
struct Boxed {
    x: usize,
    y: usize,
    lines: Vec<String>,
    state: State,
}

impl Boxed {
    fn new(lines: Vec<String>, state: State) -> Boxed {
        Boxed {
            x: 0,
            y: 0,
            lines,
            state,
        }
    }
    /// One character more than the longest line: fonts' monospace widths vary around `CHAR_W`.
    fn w(&self) -> usize {
        let chars = self.lines.iter().map(|l| l.chars().count()).max();
        (chars.unwrap_or(0) + 1) * CHAR_W + 2 * PAD
    }
    fn h(&self) -> usize {
        self.lines.len() * LINE_H + PAD
    }
    fn top(&self) -> (usize, usize) {
        (self.x + self.w() / 2, self.y)
    }
    fn bottom(&self) -> (usize, usize) {
        (self.x + self.w() / 2, self.y + self.h())
    }
}

fn svg_style(state: State) -> &'static str {
    match state {
        State::Broken => "stroke=\"#d00000\" stroke-width=\"2.5\" stroke-dasharray=\"7 4\"",
        State::Removing | State::Unknown => "stroke=\"#888888\" stroke-dasharray=\"2 3\"",
        State::Ok => "stroke=\"#333333\"",
    }
}

fn draw_box(out: &mut String, b: &Boxed, fill: &str) {
    let _ = writeln!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"5\" fill=\"{fill}\" {}/>",
        b.x,
        b.y,
        b.w(),
        b.h(),
        svg_style(b.state)
    );
    for (i, line) in b.lines.iter().enumerate() {
        let colour = if line.starts_with('✗') {
            "#d00000"
        } else {
            "#111111"
        };
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"{colour}\">{}</text>",
            b.x + PAD,
            b.y + (i + 1) * LINE_H,
            xml(line)
        );
    }
}

/// A line from `from` to `to`, its label `along` tenths of the way: a network's edges to its sandboxes
/// have theirs near the sandboxes, where the edges are apart.
fn draw_edge(
    out: &mut String,
    from: (usize, usize),
    to: (usize, usize),
    along: usize,
    state: State,
    label: &[String],
) {
    let _ = writeln!(
        out,
        "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {}/>",
        from.0,
        from.1,
        to.0,
        to.1,
        svg_style(state)
    );
    // Over a white patch, so lines do not cross it.
    let at = |a: usize, b: usize| (a * (10 - along) + b * along) / 10;
    let (mx, my) = (at(from.0, to.0), at(from.1, to.1));
    let width = label.iter().map(|l| l.chars().count()).max().unwrap_or(0) * 6 + 6;
    let height = label.len() * 13;
    if width > 6 {
        let _ = writeln!(
            out,
            "<rect x=\"{}\" y=\"{}\" width=\"{width}\" height=\"{height}\" fill=\"#ffffff\" opacity=\"0.85\"/>",
            mx.saturating_sub(width / 2),
            my.saturating_sub(height / 2)
        );
    }
    for (i, line) in label.iter().enumerate() {
        let colour = if line.starts_with('✗') || state == State::Broken {
            "#d00000"
        } else {
            "#1a4f8a"
        };
        let _ = writeln!(
            out,
            "<text x=\"{mx}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\" fill=\"{colour}\">{}</text>",
            my.saturating_sub(height / 2) + (i + 1) * 13 - 3,
            xml(line)
        );
    }
}

/// A self-contained SVG: host (and the overlay's other hosts) on top, networks in the middle, each over its
/// sandboxes, and what no record owns at the bottom; veth pairs are the lines from a network to a sandbox.
pub fn svg(t: &Topology) -> String {
    // Boxes, row by row.
    let mut host_lines = vec![format!("host {}", t.host.name)];
    if let Some(u) = &t.host.uplink {
        host_lines.push(format!("uplink {} {}", u.interface, uplink_addresses(u)));
    }
    for s in &t.sandboxes {
        for p in s.endpoints.iter().flat_map(|e| &e.ports) {
            host_lines.push(format!("publish {} ({})", p.describe(), s.name));
        }
    }
    let mut host = Boxed::new(host_lines, State::Ok);
    let mut peers: Vec<(usize, Boxed)> = Vec::new();
    let mut nets: Vec<Boxed> = Vec::new();
    for (i, n) in t.networks.iter().enumerate() {
        nets.push(Boxed::new(
            with_problems(network_lines(n), n.state, &n.problems),
            n.state,
        ));
        for p in n.overlay.iter().flat_map(|o| &o.peers) {
            peers.push((
                i,
                Boxed::new(with_problems(peer_lines(p), p.state, &p.problems), p.state),
            ));
        }
    }
    let mut sbs: Vec<Boxed> = t
        .sandboxes
        .iter()
        .map(|s| {
            let mut lines = vec![format!("sandbox {}", s.name), s.netns.display().to_string()];
            for e in &s.endpoints {
                match (e.address, e.ipv6) {
                    (None, Some(v6)) => lines.push(format!("{} {}", e.interface, v6.address)),
                    (a, v6) => {
                        lines.push(format!("{} {}", e.interface, or_none(a)));
                        lines.extend(v6.map(|v6| format!("  {}", v6.address)));
                    }
                }
                lines.push(format!("  {}", e.mac));
                for p in &e.ports {
                    lines.push(format!("  port {}/{}", p.container_port, p.protocol));
                }
                // What is wrong with the pair or its ports, in the box: an edge has no room for it.
                if e.state == State::Broken {
                    lines.extend(e.problems.iter().map(|p| format!("✗ {p}")));
                }
                for p in e.ports.iter().filter(|p| p.state == State::Broken) {
                    lines.extend(
                        p.problems
                            .iter()
                            .map(|q| format!("✗ port {}: {q}", p.host_port)),
                    );
                }
            }
            Boxed::new(with_problems(lines, s.state, &s.problems), s.state)
        })
        .collect();
    let mut strays: Vec<Boxed> = t
        .strays
        .iter()
        .map(|s| {
            Boxed::new(
                vec![
                    format!("{} {}", s.kind, s.name),
                    "✗ no record owns it".into(),
                ],
                State::Broken,
            )
        })
        .collect();

    // Each network's column holds the sandboxes whose first network it is; the column is as wide as the
    // wider of the network and its sandboxes side by side.
    let first_net = |s: &SandboxNode| {
        s.endpoints
            .first()
            .and_then(|e| t.networks.iter().position(|n| n.name == e.network))
    };
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); t.networks.len() + 1];
    for (i, s) in t.sandboxes.iter().enumerate() {
        let g = first_net(s).unwrap_or(t.networks.len());
        if let Some(group) = groups.get_mut(g) {
            group.push(i);
        }
    }
    let row_h = |boxes: &mut dyn Iterator<Item = usize>| boxes.max().unwrap_or(0);
    let margin = 20;
    let y_host = margin;
    let top_h = row_h(&mut std::iter::once(host.h()).chain(peers.iter().map(|(_, p)| p.h())));
    let y_net = y_host + top_h + ROW_GAP;
    let net_h = row_h(&mut nets.iter().map(Boxed::h));
    let y_sb = y_net + net_h + ROW_GAP;
    let sb_h = row_h(&mut sbs.iter().map(Boxed::h));
    let mut x = margin;
    for (g, members) in groups.iter().enumerate() {
        let span: usize = members
            .iter()
            .filter_map(|&i| sbs.get(i).map(Boxed::w))
            .sum::<usize>()
            + GAP * members.len().saturating_sub(1);
        let net_w = nets.get(g).map_or(0, Boxed::w);
        let width = span.max(net_w);
        if width == 0 {
            continue;
        }
        if let Some(n) = nets.get_mut(g) {
            n.x = x + (width - net_w) / 2;
            n.y = y_net;
        }
        let mut sx = x + (width - span) / 2;
        for &i in members {
            if let Some(b) = sbs.get_mut(i) {
                b.x = sx;
                b.y = y_sb;
                sx += b.w() + GAP;
            }
        }
        x += width + GAP;
    }
    let mut total_w = x.max(margin + host.w() + GAP);
    // The host over the networks' middle, the overlay's other hosts to its right.
    let peers_w: usize = peers.iter().map(|(_, p)| p.w() + GAP).sum();
    host.x = (total_w.saturating_sub(host.w() + peers_w) / 2).max(margin);
    host.y = y_host;
    let mut px = host.x + host.w() + GAP;
    for (_, p) in &mut peers {
        p.x = px;
        p.y = y_host;
        px += p.w() + GAP;
    }
    total_w = total_w.max(px);
    let y_stray = y_sb + sb_h + ROW_GAP / 2;
    let mut sx = margin;
    for b in &mut strays {
        b.x = sx;
        b.y = y_stray;
        sx += b.w() + GAP;
    }
    total_w = total_w.max(sx);
    let stray_h = row_h(&mut strays.iter().map(Boxed::h));
    let legend_y = y_stray + stray_h + 30;
    let height = legend_y + 20 + t.broken.len() * LINE_H + margin;
    // The legend lines can be wider than the picture.
    let widest_note = t
        .broken
        .iter()
        .map(|b| b.chars().count() * CHAR_W + 2 * margin)
        .max()
        .unwrap_or(0);
    let width = total_w.max(widest_note) + margin;

    let mut out = String::new();
    let _ = writeln!(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"monospace\" font-size=\"12\">"
    );
    let _ = writeln!(
        out,
        "<title>nsnet topology of {}</title>",
        xml(&t.host.name)
    );
    let _ = writeln!(
        out,
        "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>"
    );
    // Edges first, so boxes cover their ends.
    for (n, b) in t.networks.iter().zip(&nets) {
        draw_edge(
            &mut out,
            host.bottom(),
            b.top(),
            5,
            n.state,
            std::slice::from_ref(&n.interface),
        );
    }
    for (i, p) in &peers {
        if let Some(n) = nets.get(*i) {
            let state = p.state;
            let device = t
                .networks
                .get(*i)
                .and_then(|n| n.overlay.as_ref())
                .map(|o| format!("{} {}", o.backend, o.device))
                .unwrap_or_default();
            let from = (n.x + n.w(), n.y + n.h() / 2);
            draw_edge(&mut out, from, p.bottom(), 5, state, &[device]);
        }
    }
    for (s, b) in t.sandboxes.iter().zip(&sbs) {
        for e in &s.endpoints {
            let Some(n) = t.networks.iter().position(|n| n.name == e.network) else {
                continue;
            };
            if let Some(nb) = nets.get(n) {
                let mark = if e.state == State::Broken { "✗ " } else { "" };
                let label = [format!("{mark}{} <-> {}", e.host_interface, e.interface)];
                let state = if e.state == State::Broken || s.state == State::Broken {
                    State::Broken
                } else {
                    e.state
                };
                draw_edge(&mut out, nb.bottom(), b.top(), 7, state, &label);
            }
        }
    }
    draw_box(&mut out, &host, "#eef3fb");
    for (_, p) in &peers {
        draw_box(&mut out, p, "#eef3fb");
    }
    for b in &nets {
        draw_box(&mut out, b, "#eaf6ea");
    }
    for b in &sbs {
        draw_box(&mut out, b, "#fdf6e3");
    }
    for b in &strays {
        draw_box(&mut out, b, "#fff0f0");
    }
    let summary = if t.broken.is_empty() {
        "records and kernel agree".to_string()
    } else {
        format!(
            "✗ {} broken (red, dashed): in the records but not in the kernel, or the reverse",
            t.broken.len()
        )
    };
    let colour = if t.broken.is_empty() {
        "#333333"
    } else {
        "#d00000"
    };
    let _ = writeln!(
        out,
        "<text x=\"{margin}\" y=\"{legend_y}\" fill=\"{colour}\">{}</text>",
        xml(&summary)
    );
    for (i, b) in t.broken.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{margin}\" y=\"{}\" fill=\"#d00000\">{}</text>",
            legend_y + (i + 1) * LINE_H,
            xml(b)
        );
    }
    let _ = writeln!(out, "</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsnet_core::model::Mac;
    use nsnet_core::portmap::Proto;
    use nsnet_core::topology::{HostNode, PortNode, Stray, Uplink};
    use std::net::Ipv4Addr;

    fn net(name: &str, third: u8, state: State, internal: bool) -> NetworkNode {
        NetworkNode {
            name: name.into(),
            driver: "bridge".into(),
            interface: format!("nsbr-{name}"),
            subnet: Some(format!("172.16.{third}.0/24").parse().expect("subnet")),
            gateway: Some(Ipv4Addr::new(172, 16, third, 1)),
            ipv6: None,
            internal,
            isolate: true,
            fast_path: true,
            gateway_mode: "nat".into(),
            overlay: None,
            state,
            problems: if state == State::Broken {
                vec![format!("bridge nsbr-{name} is missing")]
            } else {
                vec![]
            },
        }
    }

    fn sandbox(
        name: &str,
        net: &str,
        ip: [u8; 4],
        ports: Vec<PortNode>,
        broken: bool,
    ) -> SandboxNode {
        let addr = Ipv4Addr::from(ip);
        SandboxNode {
            name: name.into(),
            netns: format!("/run/netns/{name}").into(),
            owned: true,
            endpoints: vec![EndpointNode {
                network: net.into(),
                interface: "eth0".into(),
                host_interface: format!("veth-{name}"),
                address: Some(ipnet::Ipv4Net::new(addr, 24).expect("prefix")),
                mac: Mac::for_ipv4(addr),
                gateway: Some(Ipv4Addr::new(ip[0], ip[1], ip[2], 1)),
                ipv6: None,
                default_route: true,
                ports,
                state: if broken { State::Broken } else { State::Ok },
                problems: if broken {
                    vec![format!("host end veth-{name} is missing")]
                } else {
                    vec![]
                },
            }],
            state: State::Ok,
            problems: vec![],
        }
    }

    /// Two networks, three sandboxes, a published port, a broken endpoint and a stray link; a name with
    /// characters that need escaping in every format.
    fn model() -> Topology {
        let port = PortNode {
            protocol: Proto::Tcp,
            host_ip: None,
            host_port: 8088,
            target: Ipv4Addr::new(172, 16, 0, 2).into(),
            container_port: 80,
            count: 1,
            translated: false,
            state: State::Ok,
            problems: vec![],
        };
        Topology {
            host: HostNode {
                name: "node<1>&\"x\"".into(),
                uplink: Some(Uplink {
                    interface: "eth0".into(),
                    addresses: vec!["192.0.2.10/24".parse().expect("address")],
                    gateway: Some(Ipv4Addr::new(192, 0, 2, 1)),
                    addresses6: vec![],
                    gateway6: None,
                }),
            },
            networks: vec![
                net("web", 0, State::Ok, false),
                net("db", 1, State::Ok, true),
            ],
            sandboxes: vec![
                sandbox("app", "web", [172, 16, 0, 2], vec![port], false),
                sandbox("api", "web", [172, 16, 0, 3], vec![], true),
                sandbox("pg", "db", [172, 16, 1, 2], vec![], false),
            ],
            strays: vec![Stray {
                kind: "link".into(),
                name: "vethdead".into(),
            }],
            broken: vec![
                "sandbox api eth0 on web: host end veth-api is missing".into(),
                "link vethdead: carries this state dir's tag, but no record owns it".into(),
            ],
            notes: vec![],
        }
    }

    #[test]
    fn text_is_a_tree_with_the_broken_marked() {
        let out = text(&model(), false);
        assert!(out.starts_with("host node<1>&\"x\"  uplink eth0 192.0.2.10/24 via 192.0.2.1\n"));
        assert!(out.contains("├── network web  bridge nsbr-web  172.16.0.0/24 gateway 172.16.0.1  nat, isolated, fast path\n"), "{out}");
        assert!(
            out.contains("│   ├── sandbox app  /run/netns/app\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "eth0 172.16.0.2/24 02:6e:ac:10:00:02 <-veth-> veth-app  (default route)\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("port 0.0.0.0:8088/tcp -> 172.16.0.2:80\n"),
            "{out}"
        );
        assert!(
            out.contains("veth-api  (default route)  ✗ BROKEN: host end veth-api is missing\n"),
            "{out}"
        );
        assert!(out.contains("internal, isolated, fast path"), "{out}");
        assert!(out.contains("└── link vethdead  ✗ BROKEN"), "{out}");
        assert!(out.contains("\n✗ BROKEN: 2\n"), "{out}");
        assert!(!out.contains('\x1b'), "no colour off a terminal");
        assert_eq!(out.matches(BROKEN).count(), 3, "{out}");
        let coloured = text(&model(), true);
        assert!(coloured.contains("\x1b[1;31m✗ BROKEN: host end veth-api"));
    }

    #[test]
    fn text_of_a_sound_picture_has_no_marks() {
        let mut t = model();
        t.sandboxes[1] = sandbox("api", "web", [172, 16, 0, 3], vec![], false);
        t.strays.clear();
        t.broken.clear();
        let out = text(&t, false);
        assert!(!out.contains('✗'), "{out}");
    }

    #[test]
    fn dot_is_a_balanced_graph_with_red_dashed_breakage() {
        let out = dot(&model());
        assert!(out.starts_with("graph nsnet {\n") && out.ends_with("}\n"));
        assert_eq!(out.matches('{').count(), out.matches('}').count());
        // Every statement line ends with ';', and quotes pair up (escaped ones aside).
        for line in out.lines().skip(1).filter(|l| *l != "}") {
            assert!(line.ends_with(';'), "{line}");
            let unescaped = line.replace("\\\\", "").replace("\\\"", "");
            assert_eq!(unescaped.matches('"').count() % 2, 0, "{line}");
        }
        assert!(out.contains("host [label=\"host node<1>&\\\"x\\\"\\nuplink eth0 192.0.2.10/24\""));
        assert!(out.contains("\"net:web\" -- \"sb:app\""), "{out}");
        assert!(out.contains("\"net:db\" -- \"sb:pg\""), "{out}");
        let api = out
            .lines()
            .find(|l| l.contains("-- \"sb:api\""))
            .expect("api's veth edge");
        assert!(
            api.contains("color=red") && api.contains("style=dashed"),
            "{api}"
        );
        assert!(out.contains("host -- \"sb:app\" [label=\"0.0.0.0:8088/tcp -> 172.16.0.2:80\", constraint=false, style=dotted"));
        assert!(out.contains(
            "\"stray:link:vethdead\" [label=\"link vethdead\\n✗ no record owns it\", color=red"
        ));
    }

    #[test]
    fn svg_is_well_formed_and_draws_the_broken_red() {
        let out = svg(&model());
        let doc = roxmltree::Document::parse(&out).expect("well-formed XML");
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(
            root.tag_name().namespace(),
            Some("http://www.w3.org/2000/svg")
        );
        let texts: Vec<String> = root
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(str::to_string))
            .collect();
        for want in [
            "host node<1>&\"x\"",
            "network web (bridge)",
            "network db (bridge)",
            "sandbox app",
            "sandbox api",
            "sandbox pg",
            "veth-app <-> eth0",
            "publish 0.0.0.0:8088/tcp -> 172.16.0.2:80 (app)",
            "✗ host end veth-api is missing",
            "link vethdead",
        ] {
            assert!(
                texts.iter().any(|t| t == want),
                "no text {want:?} in {texts:#?}"
            );
        }
        // The broken edge and the stray are red and dashed; nothing else is.
        let dashed_red = root
            .descendants()
            .filter(|n| n.attribute("stroke") == Some("#d00000"))
            .filter(|n| n.attribute("stroke-dasharray").is_some())
            .count();
        assert_eq!(dashed_red, 2, "{out}");
        // Boxes do not overlap within a row and lie inside the picture.
        let width: usize = root
            .attribute("width")
            .and_then(|w| w.parse().ok())
            .expect("width");
        let mut rects: Vec<(usize, usize, usize)> = root
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("rx").is_some())
            .filter_map(|n| {
                let num = |a| n.attribute(a).and_then(|v: &str| v.parse::<usize>().ok());
                Some((num("y")?, num("x")?, num("x")? + num("width")?))
            })
            .collect();
        rects.sort_unstable();
        for pair in rects.windows(2) {
            if pair[0].0 == pair[1].0 {
                assert!(pair[0].2 <= pair[1].1, "overlap: {pair:?}");
            }
        }
        assert!(rects.iter().all(|r| r.2 <= width));
    }

    /// A dual-stack network and an IPv6-only one: each family's subnet and gateway, the endpoints' IPv6
    /// addresses, one port line per family (a broken IPv6 one marked) and the socket-translated `[::1]`.
    fn model6() -> Topology {
        use nsnet_core::topology::{Ep6Node, Net6Node};
        let mut t = model();
        t.strays.clear();
        t.broken.clear();
        t.networks.truncate(1);
        if let Some(u) = t.host.uplink.as_mut() {
            u.addresses6 = vec!["2001:db8::10/64".parse().expect("address")];
            u.gateway6 = Some("fe80::1".parse().expect("gateway"));
        }
        let v6 = |subnet: &str, gateway: &str, nat: bool| Net6Node {
            subnet: subnet.parse().expect("subnet"),
            gateway: gateway.parse().expect("gateway"),
            link_local: "fe80::1".parse().expect("link-local"),
            nat,
        };
        t.networks[0].ipv6 = Some(v6("fd00:1::/64", "fd00:1::1", true));
        t.networks.push(NetworkNode {
            subnet: None,
            gateway: None,
            ipv6: Some(v6("2001:db8:6::/64", "2001:db8:6::1", false)),
            ..net("six", 6, State::Ok, false)
        });
        let port = |target: &str, host_ip: Option<&str>, translated: bool, broken: bool| PortNode {
            protocol: Proto::Tcp,
            host_ip: host_ip.map(|ip| ip.parse().expect("host ip")),
            host_port: 8088,
            target: target.parse().expect("target"),
            container_port: 80,
            count: 1,
            translated,
            state: if broken { State::Broken } else { State::Ok },
            problems: if broken {
                vec!["the firewall lacks its IPv6 DNAT element".into()]
            } else {
                vec![]
            },
        };
        let mut app = sandbox("app", "web", [172, 16, 0, 2], vec![], false);
        app.endpoints[0].ipv6 = Some(Ep6Node {
            address: "fd00:1::2/64".parse().expect("address"),
            link_local: "fe80::6e:acff:fe10:2".parse().expect("link-local"),
            gateway: "fd00:1::1".parse().expect("gateway"),
        });
        app.endpoints[0].ports = vec![
            port("172.16.0.2", None, false, false),
            port("fd00:1::2", None, false, true),
            port("fd00:1::2", Some("::1"), true, false),
        ];
        let mut only = sandbox("only", "six", [0, 0, 0, 0], vec![], false);
        only.endpoints[0].address = None;
        only.endpoints[0].gateway = None;
        only.endpoints[0].ipv6 = Some(Ep6Node {
            address: "2001:db8:6::2/64".parse().expect("address"),
            link_local: "fe80::6c:1:2".parse().expect("link-local"),
            gateway: "2001:db8:6::1".parse().expect("gateway"),
        });
        t.sandboxes = vec![app, only];
        t.broken = vec!["sandbox app port [::]:8088/tcp -> [fd00:1::2]:80: the firewall lacks its IPv6 DNAT element".into()];
        t
    }

    /// A dual-stack overlay's cluster prefix and a peer's IPv6 block with its next hop and neighbour, in
    /// every format.
    #[test]
    fn a_dual_stack_overlays_peer_blocks_are_drawn() {
        use nsnet_core::model::Mac;
        use nsnet_core::topology::{OverlayNode, PeerNode};
        let mut t = model6();
        t.networks[0].overlay = Some(OverlayNode {
            cluster: "172.16.0.0/16".parse().expect("cluster"),
            cluster6: Some("fd00:10:244::/56".parse().expect("cluster6")),
            backend: "vxlan".into(),
            device: "nsvx-web".into(),
            vni: 1,
            peers: vec![PeerNode {
                subnet: "172.16.5.0/24".parse().expect("block"),
                underlay: "192.0.2.11".parse().expect("underlay"),
                subnet6: Some("fd00:10:244:5::/64".parse().expect("block6")),
                via6: Some("fd00:10:244:5::".parse().expect("via")),
                mac6: Some(Mac([0x0e, 0x6e, 10, 244, 5, 0])),
                state: State::Broken,
                problems: vec!["no IPv6 route to fd00:10:244:5::/64 via fd00:10:244:5:: on nsvx-web (the agent puts it back)".into()],
            }],
        });
        let out = text(&t, false);
        assert!(
            out.contains(
                "overlay vxlan vni 1 by nsvx-web, cluster 172.16.0.0/16 and fd00:10:244::/56\n"
            ),
            "{out}"
        );
        assert!(out.contains("host at 192.0.2.11 has 172.16.5.0/24 and fd00:10:244:5::/64 via fd00:10:244:5:: (neighbour 0e:6e:0a:f4:05:00)  ✗ BROKEN: no IPv6 route"), "{out}");
        let d = dot(&t);
        assert!(
            d.contains("172.16.5.0/24\\nfd00:10:244:5::/64 via fd00:10:244:5::"),
            "{d}"
        );
        let g = svg(&t);
        assert!(g.contains("fd00:10:244:5::/64 via fd00:10:244:5::"), "{g}");
    }

    #[test]
    fn ipv6_sides_are_drawn_in_every_format() {
        let t = model6();
        let out = text(&t, false);
        assert!(
            out.contains("uplink eth0 192.0.2.10/24 2001:db8::10/64 via 192.0.2.1, fe80::1\n"),
            "{out}"
        );
        assert!(out.contains("network web  bridge nsbr-web  172.16.0.0/24 gateway 172.16.0.1, fd00:1::/64 gateway fd00:1::1 (fe80::1)  nat, isolated, fast path, nat66\n"), "{out}");
        assert!(out.contains("network six  bridge nsbr-six  2001:db8:6::/64 gateway 2001:db8:6::1 (fe80::1)  nat, isolated, fast path, no nat66\n"), "{out}");
        assert!(out.contains("eth0 172.16.0.2/24 fd00:1::2/64 fe80::6e:acff:fe10:2/64 02:6e:ac:10:00:02 <-veth-> veth-app"), "{out}");
        assert!(
            out.contains("eth0 2001:db8:6::2/64 fe80::6c:1:2/64 "),
            "{out}"
        );
        assert!(
            out.contains("port 0.0.0.0:8088/tcp -> 172.16.0.2:80\n"),
            "{out}"
        );
        assert!(out.contains("port [::]:8088/tcp -> [fd00:1::2]:80  ✗ BROKEN: the firewall lacks its IPv6 DNAT element\n"), "{out}");
        assert!(
            out.contains("port [::1]:8088/tcp -> [fd00:1::2]:80  (socket translation)\n"),
            "{out}"
        );
        assert!(!out.contains("none"), "{out}");
        let d = dot(&t);
        assert!(d.contains("fd00:1::/64\\ngateway fd00:1::1 fe80::1"), "{d}");
        assert!(d.contains("nsbr-six\\n2001:db8:6::/64"), "{d}");
        assert!(
            d.contains("veth-only <-> eth0\\n2001:db8:6::2/64\\n"),
            "{d}"
        );
        let g = svg(&t);
        assert!(g.contains("eth0 2001:db8:6::2/64"), "{g}");
        assert!(g.contains("fd00:1::2/64"), "{g}");
    }
}
