"""Plants scheduler and deadline bugs one at a time in src/serve/, runs the tests meant to
catch them, and restores the file: every plant must make at least one test fail.

    python3 scripts/serve_plants.py          # all (about 10 minutes on 2 cores)
    python3 scripts/serve_plants.py P3 P7    # some

Unit plants run `cargo test --lib serve::scheduler`, HTTP plants `cargo test --test serve_http
deadlines`, model plants (issue 12) `cargo test --test serve_http two_models`, swap plants
`cargo test --test serve_process`, shadow plants `cargo test --test serve_http shadow`. A plant whose text no longer matches the source fails loudly (an AssertionError):
update it with the code.
"""
import os
import re
import subprocess
import sys

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
env = dict(os.environ)
S='src/serve/scheduler.rs'
def fn_replace(src, name, new):
    i=src.index(f"fn {name}(")
    i=src.rindex("\n",0,i)+1
    j=src.index("\n}\n",i)+3
    return src[:i]+new+src[j:]
FIFO='''fn plan(waiting: &[&[EncodedPair]], limit: usize) -> Vec<usize> {
    let mut takes = vec![0; waiting.len()];
    let (mut pairs, mut tokens) = (0, 0);
    'all: for (k, w) in waiting.iter().enumerate() {
        for p in w.iter() {
            if pairs > 0 && tokens + p.ids.len() > limit { break 'all; }
            pairs += 1; tokens += p.ids.len(); takes[k] += 1;
        }
    }
    takes
}
'''
SRF='''fn plan(waiting: &[&[EncodedPair]], limit: usize) -> Vec<usize> {
    let mut takes = vec![0; waiting.len()];
    let (mut pairs, mut tokens) = (0, 0);
    let mut order: Vec<usize> = (0..waiting.len()).collect();
    order.sort_by_key(|&k| waiting[k].iter().map(|p| p.ids.len()).sum::<usize>());
    'all: for k in order {
        for p in waiting[k].iter() {
            if pairs > 0 && tokens + p.ids.len() > limit { break 'all; }
            pairs += 1; tokens += p.ids.len(); takes[k] += 1;
        }
    }
    takes
}
'''
def sub(old,new,count=1):
    def f(src):
        assert src.count(old)>=1, old
        return src.replace(old,new,count)
    return f
GROUPS_OLD='''            let waiting: Vec<&[EncodedPair]> =
                queue.iter().map(|a| &a.job.pairs[a.next..]).collect();
            plan(&waiting, limit)
                .into_iter()'''
GROUPS_NEW='''            let mut owner = Vec::new();
            let waiting: Vec<&[EncodedPair]> = queue
                .iter()
                .enumerate()
                .flat_map(|(k, a)| {
                    let mut at = 0;
                    a.job.group_lens.iter().filter_map(move |&n| {
                        let (s, e) = (at.max(a.next), at + n);
                        at += n;
                        (s < e).then(|| (k, &a.job.pairs[s..e]))
                    })
                })
                .map(|(k, w)| {
                    owner.push(k);
                    w
                })
                .collect();
            let per = plan(&waiting, limit);
            let mut takes = vec![0; queue.len()];
            for (i, n) in per.into_iter().enumerate() {
                takes[owner[i]] += n;
            }
            takes
                .into_iter()'''
def tei_model_plant(src):
    field = "model: r.model,"
    i = src.index(field, src.index("Route::Tei =>"))
    return src[:i] + "model: None," + src[i + len(field):]

def cohere_plant(src):
    field = "timeout: Timeout::from_field(r.timeout_ms)?,"
    i = src.index(field, src.index("Route::Cohere { .. } =>"))
    return src[:i] + "timeout: None," + src[i + len(field):]

plants=[
 ("P1 FIFO packing (the old policy)", S, lambda s: fn_replace(s,"plan",FIFO), "lib"),
 ("P2 shortest-remaining-first, no age bound", S, lambda s: fn_replace(s,"plan",SRF), "lib"),
 ("P3 fit test one token short (>= limit)", S, sub("if pairs > 0 && tokens + t > limit {","if pairs > 0 && tokens + t >= limit {"), "lib"),
 ("P4 per-request cap of half the budget", S, sub("if pairs > 0 && tokens + t > limit {","if pairs > 0 && (tokens + t > limit || taken + t > limit / 2) {"), "lib"),
 ("P5 ties to the youngest", S, lambda s: sub(".map(|k| Reverse((0, k)))",".map(|k| Reverse((0, usize::MAX - k)))")(sub("while let Some(Reverse((taken, k))) = turn.pop() {","while let Some(Reverse((taken, key))) = turn.pop() {\n        let k = usize::MAX - key;")(sub("turn.push(Reverse((taken + t, k)));","turn.push(Reverse((taken + t, usize::MAX - k)));")(s))), "lib"),
 ("P6 fairness per group, not per call", S, sub(GROUPS_OLD,GROUPS_NEW), "lib"),
 ("P7 no deadline check before a forward", S, sub("match a.job.ticket.verdict(now) {","match a.job.ticket.verdict(now).filter(|v| matches!(v, Verdict::Gone)) {"), "lib"),
 ("P8 no deadline check when a request finishes", S, sub("if let Some(verdict @ Verdict::Expired(_)) = ticket.verdict(now) {","if let Some(verdict @ Verdict::Expired(_)) = ticket.verdict(now).filter(|_| false) {"), "lib"),
 ("P9 no deadline check before tokenizing", S, sub("if let Some(verdict) = ticket.verdict(clock()) {","if let Some(verdict) = ticket.verdict(clock()).filter(|v| matches!(v, Verdict::Gone)) {"), "lib"),
 ("P10 logits reassembled at the wrong offsets", S, sub("                    at += e - s;\n","                    at += (e - s) / 2;\n"), "lib"),
 ("P11 caller waits for the scheduler (no timer at the deadline)", S, sub("        match self.deadline {\n            None =>","        match None::<Deadline> {\n            None =>"), "lib"),
 ("P12 Cohere routes ignore timeout_ms", 'src/serve/api.rs', lambda s: cohere_plant(s), "http"),
 ("P13 header ignored", 'src/serve/http.rs', sub("Ok(t) => call.timeout = call.timeout.or(t),","Ok(_) => {}"), "http"),
 ("P14 header wins over the body", 'src/serve/http.rs', sub("Ok(t) => call.timeout = call.timeout.or(t),","Ok(t) => call.timeout = t.or(call.timeout),"), "http"),
 ("P15 --request-timeout-ms not applied", 'src/serve/mod.rs', sub("if call.timeout.is_none() {","if call.timeout.is_none() && false {"), "http"),
 ("M1 the model field ignored (always the default)", 'src/serve/mod.rs', sub("self.models.get(call.model.as_deref())?","self.models.get(None)?"), "models"),
 ("M2 TEI's model field dropped", 'src/serve/api.rs', tei_model_plant, "models"),
 ("M3 an unknown model falls back to the default", 'src/serve/models.rs', sub("if let Some(m) = list.iter().find(|m| m.name == want) {","if let Some(m) = list.iter().find(|m| m.name == want || m.name == self.default) {"), "models"),
 ("M4 the answer names the default model", 'src/serve/mod.rs', sub("model: &model.name,","model: self.models.default_name(),"), "models"),
 ("S1 the API key opens the admin routes", 'src/serve/http.rs', sub("(true, Some(key), _) => Some(bearer(key)),","(true, Some(key), _) => Some(bearer(key) || s.opts.api_key.as_deref().is_some_and(bearer)),"), "swap"),
 ("S2 admin routes on without --admin-key", 'src/serve/http.rs', sub("(true, None, _) => None,","(true, None, _) => Some(true),"), "swap"),
 ("S3 SIGHUP ignored", 'src/serve/mod.rs', sub("            service.reload_all().await;\n","            let _ = &service;\n"), "swap"),
 ("S4 a swap keeps the old model serving", 'src/serve/models.rs', sub("Some(slot) => Some(std::mem::replace(slot, new)),","Some(_) => Some(new),"), "swap"),
 ("S5 a failed load spends a revision", 'src/serve/mod.rs', sub("let revision = self.revisions.load(Ordering::Acquire) + 1;","let revision = self.revisions.fetch_add(1, Ordering::AcqRel) + 1;"), "swap"),
 ("X1 the shadow compared with the default model itself", 'src/serve/shadow.rs', sub("agreement(p, s, k.max(1))","agreement(p, p, k.max(1))"), "shadow"),
 ("X2 top-k overlap ignores top_n", 'src/serve/shadow.rs', sub("group.top_n.unwrap_or(DEFAULT_K)","DEFAULT_K"), "shadow"),
 ("X3 sampling ignores --shadow-sample", 'src/serve/shadow.rs', sub("takes(self.seen.fetch_add(1, Ordering::AcqRel), self.sample)","self.seen.fetch_add(1, Ordering::AcqRel) < u64::MAX"), "shadow"),
 ("X4 other models' requests sampled", 'src/serve/mod.rs', sub("if model.name != self.models.default_name() || !shadow.sampled() {","if !shadow.sampled() {"), "shadow"),
 ("X5 score shift with its sign flipped", 'src/serve/shadow.rs', sub("f64::from(sigmoid(b)) - f64::from(sigmoid(a))","f64::from(sigmoid(a)) - f64::from(sigmoid(b))"), "shadow"),
]
TESTS={
 "lib": ['cargo','test','--lib','serve::scheduler'],
 "http": ['cargo','test','--test','serve_http','deadlines'],
 "models": ['cargo','test','--test','serve_http','two_models'],
 "swap": ['cargo','test','--test','serve_process'],
 "shadow": ['cargo','test','--test','serve_http','shadow'],
}
only=sys.argv[1:]
survived=[]
for name,path,f,kind in plants:
    if only and not any(name.startswith(o+" ") for o in only): continue
    src=open(path).read()
    try:
        open(path,'w').write(f(src))
        cmd=TESTS[kind]
        r=subprocess.run(cmd,env=env,capture_output=True,text=True,timeout=900)
        out=r.stdout+r.stderr
        failed=re.findall(r"^test (\S+) \.\.\. FAILED",out,re.M)
        res=re.findall(r"^test result: .*$",out,re.M)
        if 'error[' in out or 'error:' in out and not res:
            print(name, "=> COMPILE ERROR", re.findall(r"^error.*$",out,re.M)[:3], flush=True)
        else:
            print(name, "=> failed:", [x.split('::')[-1] for x in failed] or "NONE (survived)", res, flush=True)
            if not failed:
                survived.append(name)
    finally:
        open(path,'w').write(src)
if survived:
    sys.exit(f"survived: {survived}")
print("every plant was caught")
