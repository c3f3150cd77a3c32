// spkv-studio: `spkv-studio [LOG.h5]` opens the app. For scripts and tests, --screenshot OUT.png opens the
// log, applies --document, --head, --zoom-token, --tau, --budget, --reference and --tab, waits for the
// background jobs, saves the window and exits (non-zero, with the message, when the log cannot be shown).
#include <QApplication>
#include <QCommandLineParser>
#include <QTimer>
#include <cstdio>

#include "gui/app/MainWindow.h"
#include "gui/widgets/TokenView.h"

using spkv::gui::MainWindow;

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  QApplication::setApplicationName("spkv-studio");
  QApplication::setOrganizationName("spkv");
  QCommandLineParser cli;
  cli.setApplicationDescription("Sparsity maps and layout design for SP-KV gate logs");
  cli.addHelpOption();
  cli.addPositionalArgument("log", "a gate log written by `spkv run` (HDF5)");
  const QCommandLineOption shot("screenshot", "save the window to this PNG once loaded, then exit", "png");
  const QCommandLineOption doc("document", "select this document index", "d", "0");
  const QCommandLineOption head("head", "select this head, as LAYER,HEAD", "l,h");
  const QCommandLineOption zoom("zoom-token", "zoom the token view onto this token", "t");
  const QCommandLineOption tau("tau", "a counterfactual tau", "tau");
  const QCommandLineOption size("size", "window size WxH", "wxh", "1400x900");
  const QCommandLineOption budget("budget", "layout designer: this many global heads", "n");
  const QCommandLineOption reference("reference", "layout designer: overlay this layout (e.g. interleaved-0)", "name");
  const QCommandLineOption tab("tab", "show this tab (Run, Documents, Layout, Tokens, Plots); repeatable", "name");
  cli.addOptions({shot, doc, head, zoom, tau, size, budget, reference, tab});
  cli.process(app);

  MainWindow win;
  const QStringList wh = cli.value(size).split('x');
  win.resize(wh.value(0).toInt(), wh.value(1).toInt());
  win.show();
  if (cli.positionalArguments().isEmpty()) {
    if (cli.isSet(shot)) {
      std::fprintf(stderr, "spkv-studio: --screenshot needs a log\n");
      return 2;
    }
    return app.exec();
  }
  win.openLog(cli.positionalArguments().first());
  if (!cli.isSet(shot)) return app.exec();

  // Scripted: each step waits for the jobs the previous one started.
  auto fail = [](const QString& m) {
    std::fprintf(stderr, "spkv-studio: %s\n", m.toUtf8().constData());
    return 1;
  };
  if (!win.jobs().waitIdle(600000) || !win.corpus()) return fail(win.lastError().isEmpty() ? "the log did not open" : win.lastError());
  win.selectDocument(cli.value(doc).toInt());
  if (cli.isSet(head)) {
    const QStringList lh = cli.value(head).split(',');
    win.selectHead(lh.value(0).toInt(), lh.value(1).toInt());
  }
  if (!win.jobs().waitIdle(600000)) return fail("timed out");
  if (cli.isSet(tau)) win.setTau(cli.value(tau).toDouble());
  if (!win.jobs().waitIdle(600000)) return fail("timed out");
  if (cli.isSet(zoom)) {
    const double t = cli.value(zoom).toDouble();
    auto& axis = win.tokenView()->axis();
    axis.zoom(axis.tokensPerPixel() * 40, 0);  // 40 px per token: the text is readable
    axis.centerOn(t);
    emit win.tokenView()->tokenClicked(int64_t(t));
    win.tokenView()->setCursor(int64_t(t));
  }
  if (cli.isSet(budget)) win.setBudget(cli.value(budget).toInt());
  if (cli.isSet(reference)) win.setReference(cli.value(reference));
  for (const QString& t : cli.values(tab))
    if (!win.showTab(t)) return fail("no tab '" + t + "'");
  if (!win.lastError().isEmpty()) return fail(win.lastError());
  QApplication::processEvents();
  if (!win.grab().save(cli.value(shot))) return fail("cannot write " + cli.value(shot));
  std::printf("spkv-studio: wrote %s\n", cli.value(shot).toUtf8().constData());
  return 0;
}
