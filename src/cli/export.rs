//! `custodian export`: a bulk export from the server's command line, for operators
//! (docs/export.md#the-command-line). The same job engine as `$export` (a row in
//! `export_jobs`, [`crate::export::runner`] working it batch by batch), the same rules
//! ([`crate::deid`]), the same policy ([`crate::policy::export::decide_operator`]: the
//! grant of a backend service) and the same audit events, with the operator (`cli`) as
//! the actor. The command works its job itself, in this process; the files go to
//! `--output`, never to a server's `export.dir`.

use super::audit::connect;
use crate::audit::{Actor, AuditContext, AuditWriter, Recorder, What, WriterSettings};
use crate::config::Config;
use crate::db::export_jobs::{self, Job, NewJob};
use crate::db::users::{self, UserKind};
use crate::domain::{FacilityId, PatientId, UserId};
use crate::export::files;
use crate::export::runner::{self, Ctx, Engine, Progress};
use crate::export::source::{self, PartSpec};
use crate::policy::export::{self as rules, Kind, Level};
use crate::policy::{ResourceType, SearchScope};
use anyhow::{Context, bail};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use uuid::Uuid;

/// The user row jobs of `custodian export` belong to (the table needs a requester; the
/// audit events name the operator, `cli`, not this row).
pub const OPERATOR_ISSUER: &str = "urn:custodian:cli";
pub const OPERATOR_SUBJECT: &str = "operator";

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Directory to write the NDJSON files and manifest.json into (created; must be empty).
    #[arg(long)]
    output: PathBuf,
    /// system (every facility, each in a folder of its own), group (one facility:
    /// --group) or patient (one patient: --patient).
    #[arg(long, default_value = "system")]
    level: String,
    /// The facility id of a group-level export.
    #[arg(long)]
    group: Option<String>,
    /// The patient id of a patient-level export.
    #[arg(long)]
    patient: Option<String>,
    /// Comma-separated resource types (default: every type the policy lets the
    /// command line export).
    #[arg(long = "type")]
    types: Option<String>,
    /// Only resources updated at or after this instant, e.g. 2026-01-01T00:00:00Z.
    #[arg(long)]
    since: Option<String>,
    /// Safe Harbor de-identified with keyed pseudonyms (the default: minimum necessary).
    #[arg(long, conflicts_with = "identified")]
    deidentified: bool,
    /// The records as they are (names, MRNs, notes): written in clear to --output.
    #[arg(long)]
    identified: bool,
    /// The k of the k-anonymity report (1–1000; default export.k).
    #[arg(long)]
    k: Option<u32>,
    /// Leave out the patients in classes smaller than k (de-identified only).
    #[arg(long)]
    suppress: bool,
}

/// What the arguments ask for, checked before anything is opened.
struct Asked {
    level: Level,
    /// The facility (group) or patient the level names.
    target: Option<Uuid>,
    types: Option<Vec<ResourceType>>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    kind: Kind,
    k: Option<u32>,
    suppress: bool,
}

fn parse(args: &ExportArgs) -> anyhow::Result<Asked> {
    let level = match args.level.as_str() {
        "system" => Level::System,
        "group" => Level::Group,
        "patient" => Level::Patient,
        _ => bail!("--level: expected system, group or patient"),
    };
    let id = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<Uuid>> {
        value
            .as_deref()
            .map(|v| Uuid::parse_str(v.trim()))
            .transpose()
            .map_err(|_| anyhow::anyhow!("{flag}: expected an id (a UUID)"))
    };
    let (group, patient) = (id("--group", &args.group)?, id("--patient", &args.patient)?);
    let target = match level {
        Level::System if group.is_some() || patient.is_some() => {
            bail!("--group and --patient go with --level group and --level patient")
        }
        Level::System => None,
        Level::Group if patient.is_some() => bail!("--patient goes with --level patient"),
        Level::Group => Some(group.context("--group: a group-level export names a facility id")?),
        Level::Patient if group.is_some() => bail!("--group goes with --level group"),
        Level::Patient => {
            Some(patient.context("--patient: a patient-level export names a patient id")?)
        }
    };
    let types = args
        .types
        .as_deref()
        .map(|list| {
            list.split(',')
                .map(|t| ResourceType::parse(t.trim()))
                .collect::<Option<Vec<_>>>()
                .filter(|t| !t.is_empty())
                .context(
                    "--type: expected resource types separated by commas, e.g. Patient,Observation",
                )
        })
        .transpose()?;
    let since = args
        .since
        .as_deref()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s.trim())
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|_| {
                    anyhow::anyhow!("--since: expected an instant such as 2026-01-01T00:00:00Z")
                })
        })
        .transpose()?;
    let kind = if args.identified {
        Kind::Identified
    } else if args.deidentified {
        Kind::Deidentified
    } else {
        rules::default_kind(&[rules::OPERATOR], level)
    };
    if let Some(k) = args.k
        && !(1..=1000).contains(&k)
    {
        bail!("--k: expected a number from 1 to 1000");
    }
    if kind == Kind::Identified && (args.k.is_some() || args.suppress) {
        bail!("--k and --suppress go with a de-identified export, not --identified");
    }
    Ok(Asked {
        level,
        target,
        types,
        since,
        kind,
        k: args.k,
        suppress: args.suppress,
    })
}

/// Runs `custodian export`.
pub async fn run(path: Option<&Path>, args: ExportArgs) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let asked = parse(&args)?;
    let permitted = rules::decide_operator(asked.kind, asked.level).map_err(|_| {
        anyhow::anyhow!(
            "the export policy gives the command line no such export (docs/export.md#policy)"
        )
    })?;
    if let Some(types) = &asked.types
        && let Some(t) = types
            .iter()
            .find(|t| !permitted.iter().any(|p| p.resource == **t))
    {
        let may: Vec<&str> = permitted.iter().map(|p| p.resource.as_str()).collect();
        bail!(
            "--type: the command line may not export {t} as {} (it may export {}; docs/export.md#policy)",
            asked.kind.as_str(),
            may.join(", ")
        );
    }
    let key = crate::crypto::ExportKey::from_config(&config.crypto)
        .map_err(|e| anyhow::anyhow!("crypto.export_key: {e}"))?
        .map(Arc::new);
    if asked.kind == Kind::Deidentified && key.is_none() {
        bail!("a de-identified export needs crypto.export_key to be set (or choose --identified)");
    }
    prepare_output(&args.output)?;

    let settings = WriterSettings::from_config(&config.audit, &config.database)?;
    let audit = AuditWriter::start(settings).context("cannot start the audit writer")?;
    let (keyring, operator, scopes) = {
        let config = config.clone();
        let (level, target) = (asked.level, asked.target);
        actix_web::web::block(move || -> anyhow::Result<_> {
            let keyring = crate::app::keys::load_keyring(
                &config.crypto,
                config.database.url.expose(),
                config.database.connect_timeout_secs,
            )?;
            let mut conn = connect(&config)?;
            let user = users::user_for(
                &mut conn,
                OPERATOR_ISSUER,
                OPERATOR_SUBJECT,
                UserKind::Service,
            )?;
            let scopes = scopes(&mut conn, level, target)?;
            Ok((keyring, user.id, scopes))
        })
        .await??
    };
    let ctx = Ctx {
        db: crate::db::Db::new(&config.database),
        keyring: Arc::new(keyring),
        audit: audit.clone(),
        clock: crate::domain::clock::system(),
        alive: std::sync::Weak::<()>::new(),
    };
    let engine = Arc::new(Engine {
        config: crate::export::ExportConfig {
            dir: args.output.join(".staging").display().to_string(),
            ..config.export.clone()
        },
        key,
        rules: Arc::new(
            crate::deid::Rules::default_rules()
                .map_err(|e| anyhow::anyhow!("de-identification rules: {e}"))?,
        ),
        owner: Uuid::new_v4(),
    });
    let several = scopes.len() > 1;
    let mut total = 0u64;
    for (label, scope) in scopes {
        let dir = if several {
            args.output.join(&label)
        } else {
            args.output.clone()
        };
        let specs: Vec<PartSpec> = permitted
            .iter()
            .filter_map(|p| {
                let wanted = asked.types.as_ref().is_none_or(|t| t.contains(&p.resource));
                let needed = wanted
                    || (asked.kind == Kind::Deidentified && p.resource == ResourceType::Patient);
                needed.then(|| PartSpec::new(p.resource, p.view, scope, wanted))
            })
            .collect();
        total += export_one(
            &ctx, &engine, &config, &asked, operator, specs, &dir, &label,
        )
        .await?;
    }
    let _ = std::fs::remove_dir(args.output.join(".staging"));
    println!(
        "exported {total} resources ({}) to {}; recorded in the audit trail as the operator (cli)",
        asked.kind.as_str(),
        args.output.display()
    );
    Ok(())
}

/// The output directory: created, or an existing empty one.
fn prepare_output(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("--output: the directory is not empty");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).context("--output: cannot create the directory")
        }
        Err(_) => bail!("--output: cannot read the directory"),
    }
}

/// The search scopes the level covers, each with the name of its output folder.
fn scopes(
    conn: &mut diesel::PgConnection,
    level: Level,
    target: Option<Uuid>,
) -> anyhow::Result<Vec<(String, SearchScope)>> {
    Ok(match (level, target) {
        (Level::Patient, Some(p)) => {
            if !users::patient_exists(conn, PatientId(p))? {
                bail!("--patient: no patient has this id");
            }
            vec![(
                format!("patient-{p}"),
                SearchScope::OnePatient(PatientId(p)),
            )]
        }
        (Level::Group, Some(f)) => {
            if !users::facility_exists(conn, FacilityId(f))? {
                bail!("--group: no facility has this id");
            }
            vec![(
                format!("facility-{f}"),
                SearchScope::Facility(FacilityId(f)),
            )]
        }
        _ => {
            let all = users::list_facilities(conn)?;
            if all.is_empty() {
                bail!("there is no facility, so there is nothing to export");
            }
            all.into_iter()
                .map(|f| {
                    (
                        format!("facility-{}", f.id.as_uuid()),
                        SearchScope::Facility(f.id),
                    )
                })
                .collect()
        }
    })
}

/// One job: kick-off (audited), worked here with a progress display, then its files
/// moved (identified: opened) into `dir` with a manifest. Returns the lines written.
#[allow(clippy::too_many_arguments)]
async fn export_one(
    ctx: &Ctx,
    engine: &Arc<Engine>,
    config: &Config,
    asked: &Asked,
    operator: UserId,
    specs: Vec<PartSpec>,
    dir: &Path,
    label: &str,
) -> anyhow::Result<u64> {
    let now = chrono::Utc::now();
    let id = Uuid::new_v4();
    let job = NewJob {
        id,
        requester_id: operator.as_uuid(),
        status: "queued".into(),
        level: asked.level.as_str().into(),
        kind: asked.kind.as_str().into(),
        group_id: (asked.level == Level::Group)
            .then_some(asked.target)
            .flatten(),
        types: specs
            .iter()
            .filter(|s| s.write)
            .map(|s| s.kind.clone())
            .collect(),
        since: asked.since,
        k: i32::try_from(asked.k.unwrap_or(config.export.k)).unwrap_or(5),
        suppress: asked.suppress,
        parts: serde_json::to_value(&specs)?,
        progress: serde_json::to_value(Progress::new(specs.len()))?,
        actor_client_id: None,
        actor_roles: Vec::new(),
        auth_method: export_jobs::CLI.into(),
        client_app: None,
        transaction_time: now,
        created_at: now,
        expires_at: now
            + chrono::Duration::minutes(i64::try_from(config.export.retain_mins).unwrap_or(1440)),
    };
    let (owner, until) = (
        engine.owner,
        now + chrono::Duration::seconds(i64::try_from(config.export.lease_secs).unwrap_or(30)),
    );
    let recorder = Recorder::new(ctx.audit.clone(), AuditContext::default(), Actor::cli());
    let what = What::new(crate::audit::AuditAction::Export)
        .on(crate::audit::ResourceType::ExportJob)
        .id(id);
    let taken: Option<Job> = recorder
        .commit_with(
            what,
            [],
            move |c| {
                // A `custodian export` that was stopped left its job: nobody else works it.
                export_jobs::delete_lapsed_of(c, operator, now)?;
                export_jobs::insert_taken(c, &job, owner, until)
            },
            None,
        )
        .await
        .map_err(|_| anyhow::anyhow!("cannot start the export job (database or audit trail)"))?;
    let Some(job) = taken else {
        bail!("another `custodian export` is still running: one at a time");
    };
    let written: Vec<PartSpec> = specs.iter().filter(|s| s.write).cloned().collect();
    let expected = {
        let db = ctx.db.clone();
        let kr = ctx.keyring.clone();
        actix_web::web::block(move || -> Result<u64, crate::error::AppError> {
            let mut conn = db.dedicated()?;
            let mut n = 0u64;
            for part in &written {
                n += u64::try_from(source::count(&mut conn, &kr, part)?).unwrap_or(0);
            }
            Ok(n)
        })
        .await?
        .map_err(|_| anyhow::anyhow!("cannot count the records to export"))?
    };
    let done = Arc::new(AtomicBool::new(false));
    let display = {
        let (db, done) = (ctx.db.clone(), done.clone());
        let label = label.to_string();
        std::thread::spawn(move || show_progress(&db, id, expected, &done, &label))
    };
    // The job runs while this command runs: `alive` is this handle.
    let alive: Arc<dyn std::any::Any + Send + Sync> = Arc::new(());
    let run_ctx = Ctx {
        db: ctx.db.clone(),
        keyring: ctx.keyring.clone(),
        audit: ctx.audit.clone(),
        clock: ctx.clock.clone(),
        alive: Arc::downgrade(&alive),
    };
    let e = engine.clone();
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::spawn_blocking(move || runner::run(&run_ctx, &e, job, &handle)).await;
    drop(alive);
    done.store(true, Ordering::Relaxed);
    let _ = display.join();
    match result {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => bail!("the export failed; the job {id} is marked failed"),
    }
    let (db, kr, root, dir2) = (
        ctx.db.clone(),
        ctx.keyring.clone(),
        engine.root(),
        dir.to_path_buf(),
    );
    let key_id = engine.key.as_ref().map(|k| k.key_id());
    actix_web::web::block(move || finish(&db, &kr, &root, id, &dir2, key_id)).await?
}

/// Moves a completed job's files into `dir` (identified lines opened) with a manifest.
fn finish(
    db: &crate::db::Db,
    kr: &crate::crypto::Keyring,
    root: &Path,
    id: Uuid,
    dir: &Path,
    key_id: Option<String>,
) -> anyhow::Result<u64> {
    let mut conn = db
        .dedicated()
        .map_err(|_| anyhow::anyhow!("database.url: cannot connect"))?;
    let job = export_jobs::get(&mut conn, id)
        .map_err(|_| anyhow::anyhow!("cannot read the export job"))?
        .context("the export job is gone (cancelled or expired)")?;
    if job.status != "completed" {
        bail!("the export did not complete (status {})", job.status);
    }
    let specs: Vec<PartSpec> = serde_json::from_value(job.parts.clone())?;
    let progress: Progress = serde_json::from_value(job.progress.clone())?;
    std::fs::create_dir_all(dir).context("--output: cannot create the directory")?;
    let mut output = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let count = progress.counts.get(i).copied().unwrap_or(0);
        if !spec.write || count == 0 {
            continue;
        }
        let kind = spec
            .resource()
            .map_err(|_| anyhow::anyhow!("export job part"))?;
        let from = files::part_file(root, id, i, kind);
        let name = format!("{}.ndjson", kind.as_str());
        let to = dir.join(&name);
        if job.kind == Kind::Deidentified.as_str() {
            std::fs::rename(&from, &to).context("--output: cannot move an export file")?;
        } else {
            let input = std::io::BufReader::new(
                std::fs::File::open(&from).context("cannot open an export file")?,
            );
            let mut out = std::io::BufWriter::new(
                std::fs::File::create(&to).context("--output: cannot write a file")?,
            );
            for (n, line) in input.lines().enumerate() {
                let line = line.context("cannot read an export file")?;
                let plain = files::open_line(kr, kind, id, n as u64, &line)
                    .map_err(|_| anyhow::anyhow!("an export file does not open"))?;
                out.write_all(&plain)?;
                out.write_all(b"\n")?;
            }
            out.flush()?;
        }
        output.push(serde_json::json!({ "type": kind.as_str(), "file": name, "count": count }));
    }
    let manifest = serde_json::json!({
        "transactionTime": job.transaction_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "job": id,
        "kind": job.kind,
        "level": job.level,
        "exportKey": key_id.filter(|_| job.kind == Kind::Deidentified.as_str()),
        "output": output,
        "k-anonymity": job.report,
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )
    .context("--output: cannot write manifest.json")?;
    files::remove_job(root, id).map_err(|_| anyhow::anyhow!("cannot remove the staging files"))?;
    Ok(progress.written())
}

/// A progress bar on a terminal (resources done / total, rate, ETA), plain lines every
/// few seconds otherwise; read from the job's committed progress.
fn show_progress(db: &crate::db::Db, id: Uuid, total: u64, done: &AtomicBool, label: &str) {
    let Ok(mut conn) = db.dedicated() else {
        return;
    };
    let tty = std::io::stderr().is_terminal();
    let bar = tty.then(|| {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} resources, {per_sec}, ETA {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        bar
    });
    let started = std::time::Instant::now();
    let mut last_line = std::time::Instant::now();
    loop {
        let finished = done.load(Ordering::Relaxed);
        let written = export_jobs::get(&mut conn, id)
            .ok()
            .flatten()
            .and_then(|j| serde_json::from_value::<Progress>(j.progress).ok())
            .map_or(0, |p| p.written());
        match &bar {
            Some(bar) => bar.set_position(written),
            None if finished || last_line.elapsed().as_secs() >= 2 => {
                let secs = started.elapsed().as_secs_f64().max(0.001);
                let rate = written as f64 / secs;
                let eta = if rate > 0.0 {
                    format!("{:.0} s", total.saturating_sub(written) as f64 / rate)
                } else {
                    "?".into()
                };
                eprintln!("{label}: {written}/{total} resources, {rate:.0}/s, ETA {eta}");
                last_line = std::time::Instant::now();
            }
            None => {}
        }
        if finished {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    if let Some(bar) = bar {
        bar.finish();
    }
}
